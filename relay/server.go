// Package relay is the local side: the SMTP listener local clients talk to,
// access control, and the delivery scheduler that drains the durable queue
// (relay/queue) into the upstream.
//
// Data flows one way: listener → queue → scheduler → upstream. A client gets
// 250 only after its message is on disk; within the sync window it gets the
// upstream's permanent refusal instead, when there is one.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// ListenConfig configures the local listener.
type ListenConfig struct {
	Addrs          []string
	Allow          []netip.Prefix
	Users          map[string]string // local SMTP logins; empty: any login is accepted
	TLS            *tls.Config       // offered through STARTTLS when set
	Hostname       string            // in the greeting
	MaxRecipients  int
	Timeout        time.Duration
	MaxConnections int // concurrent client connections; 0: no limit
	// MaxConnectionsPerClient caps one client address's (an IPv6 /64's)
	// concurrent connections; 0: no limit.
	MaxConnectionsPerClient int
	SyncWindow              time.Duration
	// BulkGap: a client's message is answered after the local commit, not
	// the sync window, when the client had another in flight or finished
	// one less than BulkGap before (bulk.go); 0: never.
	BulkGap  time.Duration
	TLSAddrs []string // implicit-TLS listeners, for clients that only speak that
	// UpstreamLimit, if set, returns the upstream's advertised size limit
	// (0 while unknown), so a client announcing a larger SIZE is refused
	// at once instead of after the upload.
	UpstreamLimit func() int64
}

// Server is the local SMTP listener.
type Server struct {
	cfg   ListenConfig
	in    *Intake
	sched *Scheduler
	log   zerolog.Logger
	smtp  *smtp.Server
	lns   []net.Listener
	wg    sync.WaitGroup

	mu        sync.Mutex
	sessions  map[*session]struct{}
	logins    loginLimits
	connCount int
	perClient map[netip.Prefix]int
	refusals  refusalLogs
	bulk      *bulkTracker
}

// NewServer returns a listener that takes messages through in and hands
// them to sched.
func NewServer(cfg ListenConfig, in *Intake, sched *Scheduler, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, in: in, sched: sched, log: log, sessions: map[*session]struct{}{}, logins: newLoginLimits(),
		perClient: map[netip.Prefix]int{}, refusals: newRefusalLogs(log, refusalInterval), bulk: newBulkTracker(cfg.BulkGap)}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.TLSConfig = cfg.TLS
	// go-smtp refuses a message of exactly MaxMessageBytes bytes.
	srv.MaxMessageBytes = in.Limit() + 1
	srv.EnableSMTPUTF8 = true
	srv.MaxRecipients = cfg.MaxRecipients
	// Read deadlines and line lengths are the connection guard's (conn.go):
	// go-smtp's cannot tell a command from a message body.
	srv.ReadTimeout = 0
	srv.MaxLineLength = 0
	srv.WriteTimeout = cfg.Timeout
	// Local clients (scanners, scripts) rarely do TLS: logins in clear
	// text are taken from this machine only (see session.AuthMechanisms).
	srv.AllowInsecureAuth = true
	srv.ErrorLog = errorLog{log}
	s.smtp = srv
	return s
}

// Listen binds every address. Extra addresses that cannot be bound because
// the system lacks the address family (no IPv6) are skipped.
func (s *Server) Listen() error {
	if err := s.listen(s.cfg.Addrs, false); err != nil {
		return err
	}
	return s.listen(s.cfg.TLSAddrs, true)
}

func (s *Server) listen(addrs []string, implicitTLS bool) error {
	for i, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if i > 0 {
				s.log.Debug().Err(err).Str("addr", addr).Msg("optional listen address skipped")
				continue
			}
			s.Close()
			return &ListenError{Addr: addr, Err: err}
		}
		var l net.Listener = &accessListener{Listener: ln, srv: s}
		if implicitTLS {
			l = tls.NewListener(l, s.cfg.TLS)
		}
		s.lns = append(s.lns, l)
	}
	return nil
}

// ListenError is a listen address that cannot be bound.
type ListenError struct {
	Addr string
	Err  error
}

func (e *ListenError) Error() string { return fmt.Sprintf("listen on %s: %v", e.Addr, e.Err) }
func (e *ListenError) Unwrap() error { return e.Err }

// Remedy says what to do about it.
func (e *ListenError) Remedy() string {
	switch {
	case addrInUse(e.Err):
		return "Another program (or another icloud-relay) already listens on " + e.Addr + ": stop it (is the relay already running as a service?), or set listen.addr to a free port."
	case addrDenied(e.Err):
		return "This user may not listen on " + e.Addr + " (ports below 1024 need administrator rights): set listen.addr to a port above 1024, such as 2525."
	case addrNotLocal(e.Err):
		return "This machine has no address " + e.Addr + ": set listen.addr to one of its addresses, usually 127.0.0.1:2525."
	}
	return "Check listen.addr (and listen.tls_addr): the relay cannot listen there."
}

// Addr returns the first bound address.
func (s *Server) Addr() net.Addr { return s.lns[0].Addr() }

// Serve accepts connections on every bound address until Close.
func (s *Server) Serve() {
	for _, ln := range s.lns {
		s.log.Info().Str("addr", ln.Addr().String()).Msg("listening for local mail clients")
		s.wg.Add(1)
		go func(ln net.Listener) {
			defer s.wg.Done()
			s.smtp.Serve(ln)
		}(ln)
	}
}

// Shutdown stops accepting, closes idle client sessions at once and lets
// sessions in the middle of a message finish until ctx ends; then it closes
// the rest (their clients got no 250, so they will send again).
func (s *Server) Shutdown(ctx context.Context) error {
	for _, ln := range s.lns {
		ln.Close()
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		idle, busy := s.partition()
		for _, c := range idle {
			c.Close()
		}
		if busy == 0 {
			break
		}
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
			s.log.Warn().Int("sessions", busy).Msg("stop timeout: closing client sessions still sending; those clients will send again")
		}
		break
	}
	s.smtp.Close()
	s.wg.Wait()
	s.refusals.stop()
	return nil
}

// partition returns the connections of idle sessions and counts the
// sessions inside a mail transaction.
func (s *Server) partition() (idle []*smtp.Conn, busy int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		if ss.busy.Load() {
			busy++
		} else {
			idle = append(idle, ss.conn)
		}
	}
	return idle, busy
}

// Close stops at once.
func (s *Server) Close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.smtp.Close()
	s.refusals.stop()
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ss := &session{srv: s, conn: c, guard: guardOf(c.Conn()), helo: c.Hostname(), remote: c.Conn().RemoteAddr().String()}
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	return ss, nil
}

type session struct {
	srv    *Server
	conn   *smtp.Conn
	guard  *clientConn // nil in tests that build sessions directly
	busy   atomic.Bool // inside a mail transaction: a stop waits for it
	remote string
	authed bool
	helo   string
	// origFrom is the client's MAIL FROM; from is what goes upstream.
	origFrom string
	from     string
	utf8     bool
	rcpts    []string
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.guard.isEnded() {
		return errEnded
	}
	if len(ss.srv.cfg.Users) > 0 && !ss.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required: log in with a user from this relay's [[listen.users]]"}
	}
	if opts != nil && ss.srv.cfg.UpstreamLimit != nil {
		if limit := ss.srv.cfg.UpstreamLimit() - headerReserve; limit > 0 && opts.Size > limit {
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
				Message: fmt.Sprintf("Message too large: iCloud accepts up to %d bytes", limit)}
		}
	}
	upFrom, refusal := ss.srv.in.Sender(from)
	if refusal != nil {
		ss.srv.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Str(logging.KeyFrom, from).Int(logging.KeyCode, refusal.Code).
			Str("remedy", "Send from the iCloud address or an alias, list the address in sender.aliases, or set sender.rewrite.").
			Msg("sender refused: not an address iCloud accepts, and sender.rewrite is off")
		return refusal
	}
	ss.origFrom = from
	ss.from = upFrom
	ss.utf8 = opts != nil && opts.UTF8
	ss.busy.Store(true)
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

// Data reads one message. It runs in the guard's data phase; a transfer
// that fails (the client stalls, sends too much, hangs up, or the message
// cannot be stored) ends the connection, so that nothing of the body can
// be read as commands. A verdict on a message read whole (the upstream's
// refusal in the sync window) does not.
func (ss *session) Data(r io.Reader) error {
	ss.guard.beginData()
	reply, failed := ss.data(r)
	ss.guard.endData(failed)
	if reply == nil {
		return nil
	}
	return reply
}

func (ss *session) data(r io.Reader) (reply *smtp.SMTPError, failed bool) {
	s := ss.srv
	host, _, _ := net.SplitHostPort(ss.remote)
	bulk, done := s.bulk.begin(host, time.Now())
	defer done()
	m, st, err := s.in.Stage(Envelope{From: ss.origFrom, Rcpts: ss.rcpts, UTF8: ss.utf8, Helo: ss.helo, Client: host}, r)
	// With a sync window an interactive client waits for the first
	// attempt, and the message stays staged: committed to disk only when
	// the upstream does not take it at once (see queue.Stage). A bulk one
	// is committed and answered at once, unless the upstream's round trip
	// is shorter than a commit (bulk.go).
	window := s.cfg.SyncWindow
	if bulk && !s.sched.NearUpstream() {
		window = 0
	}
	if err == nil && window <= 0 {
		err, st = s.in.q.Commit(st, m), nil
	}
	if err != nil {
		return ss.intakeFailed(err), true
	}
	tried := s.sched.Submit(m, st)
	if st == nil {
		return queuedReply(m), false
	}
	// The session owns the staged message until it settles it: at the
	// first attempt's end, or when the window runs out.
	if tried != nil {
		t := time.NewTimer(window)
		defer t.Stop()
		select {
		case <-tried:
		case <-t.C:
		}
	}
	o, err := s.sched.Settle(m.ID)
	if err != nil {
		return ss.intakeFailed(err), true
	}
	if reply := s.outcomeReply(m, o); reply != nil {
		return reply, false
	}
	return queuedReply(m), false
}

func queuedReply(m *queue.Message) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Queued as " + m.ID + "; delivery continues in the background"}
}

// intakeFailed logs why a message could not be taken and returns the
// reply: the client's own failures (a stall, too much data, a hang-up, a
// line that cannot be sent) are never blamed on the queue, and a
// permanent problem never gets a temporary reply.
func (ss *session) intakeFailed(err error) *smtp.SMTPError {
	s := ss.srv
	var ce *clientError
	var le *LineError
	var ge *lineGrowthError
	var se *smtp.SMTPError
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		s.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Int64("limit", s.in.Limit()).
			Str("remedy", "Send a smaller message (attachments of a few MB at most), or raise listen.max_message_size up to iCloud's limit of about 20 MB.").
			Msg("message refused: too large")
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: fmt.Sprintf("Message too large: this relay accepts up to %d bytes (iCloud's limit is about 20 MB)", s.in.Limit())}
	case errors.As(err, &le):
		s.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Int64("line", le.Line).Int64("line_length", le.Length).
			Str("remedy", "Have the program send lines of at most 998 characters (or send the content as an attachment).").
			Msg("message refused: a line too long to deliver")
		return le.SMTPReply()
	case errors.As(err, &ge):
		s.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Int64(logging.KeySize, ge.size).Int64("limit", s.in.Limit()).
			Str("remedy", "Send a smaller message, or one with lines of at most 998 characters.").
			Msg("message refused: too large once its long lines are re-encoded")
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: fmt.Sprintf("Message too large: re-encoding its long lines makes it %d bytes, over this relay's limit of %d", ge.size, s.in.Limit())}
	case !errors.As(err, &ce) && errors.As(err, &se):
		return se // the sender policy's refusal
	case errors.As(err, &ce) && errors.As(err, &se):
		// The guard's own reply: the client stalled mid-message.
		s.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Int64("timeout_ms", s.cfg.Timeout.Milliseconds()).
			Str("remedy", "The client stopped sending in the middle of a message; the message was not taken and the client must send it again. For a very slow client raise listen.timeout.").
			Msg("client stalled in the middle of a message; closed")
		return se
	case errors.As(err, &ce):
		s.log.Info().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Err(ce.err).Msg("client hung up in the middle of a message; nothing was taken")
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "The message did not arrive whole; closing"}
	}
	s.log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyClient, ss.remote).
		Str(logging.KeyRemedy, logging.RemedyQueueDir).
		Msg("cannot store an incoming message; the client was told to retry")
	return storeFailed(err)
}

// outcomeReply is the reply for a first attempt's outcome, or nil when the
// message stays queued.
func (s *Server) outcomeReply(m *queue.Message, o Outcome) *smtp.SMTPError {
	switch {
	case o.Refusal != nil:
		return o.Refusal.SMTPReply()
	case o.Delivered:
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Delivered to iCloud (" + m.ID + ")"}
	case len(o.Refused) > 0:
		// SMTP has no way to refuse a recipient after the data: the 250
		// says who did not get it (a failure notice follows if configured).
		var b strings.Builder
		fmt.Fprintf(&b, "Delivered to iCloud for %d of %d recipients (%s); refused for good:", len(m.Rcpts)-len(o.Refused), len(m.Rcpts), m.ID)
		for i, r := range o.Refused {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, " <%s> %d %s", r.Addr, r.Error.Code, r.Error.Text)
		}
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: strings.Join(strings.Fields(b.String()), " ")}
	}
	return nil
}

// storeFailed is the reply when the queue cannot take a message: always
// temporary, so the client keeps its copy and tries again.
func storeFailed(err error) *smtp.SMTPError {
	// Never go-smtp's default 554 for a plain error: that would make
	// the client drop the mail.
	if errors.Is(err, syscall.ENOSPC) {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "The relay's disk is full; try again later"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot store the message in the local queue right now; try again later"}
}

func (ss *session) Reset() {
	ss.origFrom, ss.from, ss.utf8, ss.rcpts = "", "", false, nil
	ss.busy.Store(false)
}

func (ss *session) Logout() error {
	ss.srv.mu.Lock()
	delete(ss.srv.sessions, ss)
	ss.srv.mu.Unlock()
	return nil
}

// clientReader reads a message's data from the client. It enforces the
// size limit, notes bytes above 127 (which need 8BITMIME upstream), and
// marks its errors as the client's, so that a stalled or broken upload is
// never reported as a queue failure.
type clientReader struct {
	r        io.Reader
	limit    int64 // 0: none
	read     int64
	eightBit bool
}

func (c *clientReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.read += int64(n); c.limit > 0 && c.read > c.limit {
		return 0, &clientError{err: smtp.ErrDataTooLarge}
	}
	if !c.eightBit {
		for _, b := range p[:n] {
			if b >= 0x80 {
				c.eightBit = true
				break
			}
		}
	}
	if err != nil && err != io.EOF {
		err = &clientError{err: err}
	}
	return n, err
}

// clientError is a failure to read from the client.
type clientError struct{ err error }

func (e *clientError) Error() string { return "reading the message from the client: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// errorLog routes go-smtp's internal errors into the structured log.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Printf(format string, v ...interface{}) {
	e.log.Debug().Str(logging.KeyStage, "accept").Msgf(format, v...)
}

func (e errorLog) Println(v ...interface{}) {
	e.log.Debug().Str(logging.KeyStage, "accept").Msg(fmt.Sprint(v...))
}
