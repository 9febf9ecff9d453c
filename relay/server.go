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
	"crypto/subtle"
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

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/internal/saslserver"
	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// ListenConfig configures the local listener.
type ListenConfig struct {
	Addrs          []string
	Allow          []netip.Prefix
	Users          map[string]string // local SMTP logins; empty: any login is accepted
	TLS            *tls.Config       // offered through STARTTLS when set
	Hostname       string
	MaxMessageSize int64
	MaxRecipients  int
	Timeout        time.Duration
	MaxConnections int // concurrent client connections; 0: no limit
	SyncWindow     time.Duration
	Sender         SenderPolicy
	ReceivedHeader bool     // add a Received trace header
	TLSAddrs       []string // implicit-TLS listeners, for clients that only speak that
	// UpstreamLimit, if set, returns the upstream's advertised size limit
	// (0 while unknown), so a client announcing a larger SIZE is refused
	// at once instead of after the upload.
	UpstreamLimit func() int64
}

// Server is the local SMTP listener.
type Server struct {
	cfg   ListenConfig
	q     *queue.Queue
	sched *Scheduler
	log   zerolog.Logger
	smtp  *smtp.Server
	lns   []net.Listener
	wg    sync.WaitGroup

	mu       sync.Mutex
	sessions map[*session]struct{}
	failures map[string]*authFailures // by client IP
	conns    atomic.Int64
	intake   sync.Pool // *intakeBuffers
}

// authFailures counts a client address's refused local logins.
type authFailures struct {
	count int
	since time.Time
}

// Local login rate limit: after maxAuthFailures refused logins within
// authFailureWindow, an address is refused logins until the window passes.
const (
	maxAuthFailures   = 5
	authFailureWindow = 10 * time.Minute
	authFailureDelay  = time.Second
)

// NewServer returns a listener that queues into q and hands to sched.
func NewServer(cfg ListenConfig, q *queue.Queue, sched *Scheduler, log zerolog.Logger) *Server {
	// Keep room for the headers the relay adds, so that what it accepts is
	// never too large upstream (tiny test limits are taken as they are).
	if cfg.MaxMessageSize > 4*headerReserve {
		cfg.MaxMessageSize -= headerReserve
	}
	s := &Server{cfg: cfg, q: q, sched: sched, log: log, sessions: map[*session]struct{}{}, failures: map[string]*authFailures{}}
	s.intake.New = func() any { return newIntakeBuffers() }
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.TLSConfig = cfg.TLS
	// go-smtp refuses a message of exactly MaxMessageBytes bytes.
	srv.MaxMessageBytes = cfg.MaxMessageSize + 1
	srv.EnableSMTPUTF8 = true
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout = cfg.Timeout
	srv.WriteTimeout = cfg.Timeout
	// Local clients (scanners, scripts) rarely do TLS; the listener is
	// loopback-only unless allowed networks and users are configured.
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
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		var l net.Listener = &accessListener{Listener: ln, srv: s}
		if implicitTLS {
			l = tls.NewListener(l, s.cfg.TLS)
		}
		s.lns = append(s.lns, l)
	}
	return nil
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
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ss := &session{srv: s, conn: c, helo: c.Hostname(), remote: c.Conn().RemoteAddr().String()}
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	return ss, nil
}

type session struct {
	srv    *Server
	conn   *smtp.Conn
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

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	ip, _, _ := net.SplitHostPort(ss.remote)
	if wait := ss.srv.authBlocked(ip); wait > 0 {
		return nil, &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: fmt.Sprintf("Too many failed logins from your address; try again in %s", wait.Round(time.Second))}
	}
	check := func(user, pass string) error {
		if ss.srv.checkUser(user, pass) {
			ss.authed = true
			return nil
		}
		n := ss.srv.authFailed(ip)
		ss.srv.log.Warn().Str("stage", "accept").Str("client", ss.remote).Str("username", user).Int("failures", n).
			Str("remedy", "Check the login in the client against [[listen.users]] in the relay's config.").Msg("local login refused")
		time.Sleep(authFailureDelay) // slows guessing
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Wrong username or password for this relay (see [[listen.users]] in its config)"}
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return saslserver.NewLoginServer(check), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authBlocked says how long ip must wait before logging in again.
func (s *Server) authBlocked(ip string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.failures[ip]
	if f == nil {
		return 0
	}
	left := authFailureWindow - time.Since(f.since)
	if left <= 0 {
		delete(s.failures, ip)
		return 0
	}
	if f.count < maxAuthFailures {
		return 0
	}
	return left
}

func (s *Server) authFailed(ip string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.failures[ip]
	if f == nil || time.Since(f.since) > authFailureWindow {
		f = &authFailures{since: time.Now()}
		s.failures[ip] = f
	}
	f.count++
	return f.count
}

// checkUser accepts any login when no users are configured (the listener is
// then loopback-only): old clients that insist on AUTH must still work.
func (s *Server) checkUser(user, pass string) bool {
	if len(s.cfg.Users) == 0 {
		return true
	}
	want, ok := s.cfg.Users[user]
	if !ok {
		want = "\x00never" // compare anyway: timing must not reveal user names
	}
	return subtle.ConstantTimeCompare([]byte(pass), []byte(want)) == 1 && ok
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if len(ss.srv.cfg.Users) > 0 && !ss.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required: log in with a user from this relay's [[listen.users]]"}
	}
	if opts != nil && ss.srv.cfg.UpstreamLimit != nil {
		if limit := ss.srv.cfg.UpstreamLimit() - headerReserve; limit > 0 && opts.Size > limit {
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
				Message: fmt.Sprintf("Message too large: iCloud accepts up to %d bytes", limit)}
		}
	}
	upFrom, refusal := ss.srv.cfg.Sender.envelopeSender(from)
	if refusal != nil {
		ss.srv.log.Warn().Str("stage", "accept").Str("client", ss.remote).Str("from", from).Int("smtp_code", refusal.Code).
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

func (ss *session) Data(r io.Reader) error {
	s := ss.srv
	m := &queue.Message{ID: queue.NewID(time.Now()), From: ss.from, UTF8: ss.utf8}
	for _, to := range ss.rcpts {
		m.Rcpts = append(m.Rcpts, queue.Recipient{Addr: to, Status: queue.Pending})
	}
	host, _, _ := net.SplitHostPort(ss.remote)
	eight := &eightBitReader{r: r}
	bufs := s.intake.Get().(*intakeBuffers)
	fixed, ed, err := fixMessage(bufs, eight, intake{id: m.ID, helo: ss.helo, client: host, by: s.cfg.Hostname,
		received: s.cfg.ReceivedHeader, policy: s.cfg.Sender, now: time.Now()})
	// With a sync window the client waits for the first attempt, and the
	// message stays staged: committed to disk only when the upstream does
	// not take it at once (see queue.Stage).
	var st *queue.Staged
	if err == nil {
		st, err = s.q.Stage(m, fixed)
	}
	if err == nil {
		m.EightBit = eight.seen // known once the data is read
		if s.cfg.SyncWindow <= 0 {
			err, st = s.q.Commit(st, m), nil
		}
	}
	bufs.in.Reset(nil) // hold no reference to this client while pooled
	s.intake.Put(bufs)
	if err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			s.log.Warn().Str("stage", "accept").Str("client", ss.remote).Int64("limit", s.cfg.MaxMessageSize).Msg("message refused: too large")
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
				Message: fmt.Sprintf("Message too large: this relay accepts up to %d bytes (iCloud's limit is about 20 MB)", s.cfg.MaxMessageSize)}
		}
		s.log.Error().Err(err).Str("stage", "queue").Str("client", ss.remote).
			Str("remedy", "The queue directory cannot be written: check free disk space and the permissions of queue.dir.").
			Msg("cannot store an incoming message; the client was told to retry")
		return storeFailed(err)
	}
	log := s.log.With().Str("queue_id", m.ID).Logger()
	log.Info().Str("client", ss.remote).Str("from", m.From).Int("rcpts", len(m.Rcpts)).Int64("size", m.Size).Msg("message accepted")
	if ss.origFrom != m.From {
		log.Info().Str("from", ss.origFrom).Str("rewritten_to", m.From).Msg("envelope sender rewritten (sender.rewrite)")
	}
	if ed.fromRewritten != "" {
		log.Info().Str("from", ed.fromRewritten).Str("rewritten_to", s.cfg.Sender.Address).Msg("From header rewritten (sender.rewrite = header); the original is in Reply-To unless one was set")
	}
	if ed.signedKept {
		log.Warn().Str("stage", "accept").Str("remedy", "The message is DKIM-signed, so its From was left alone; iCloud may refuse it. Send from your iCloud address.").Msg("From header not rewritten: signed message")
	}

	ch := s.sched.Submit(m, st)
	if ch != nil {
		t := time.NewTimer(s.cfg.SyncWindow)
		defer t.Stop()
		select {
		case o := <-ch:
			if reply := s.outcomeReply(m, o); reply != nil {
				return reply
			}
		case <-t.C:
		}
	}
	if st != nil {
		if err := s.sched.Commit(m.ID); err != nil {
			log.Error().Err(err).Str("stage", "queue").Str("client", ss.remote).
				Str("remedy", "The queue directory cannot be written: check free disk space and the permissions of queue.dir.").
				Msg("cannot store an incoming message; the client was told to retry")
			return storeFailed(err)
		}
		// The attempt may have ended while the message was committed.
		select {
		case o := <-ch:
			if reply := s.outcomeReply(m, o); reply != nil {
				return reply
			}
		default:
		}
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Queued as " + m.ID + "; delivery continues in the background"}
}

// outcomeReply is the reply for a first attempt's outcome, or nil when the
// message stays queued.
func (s *Server) outcomeReply(m *queue.Message, o Outcome) *smtp.SMTPError {
	switch {
	case o.Refusal != nil:
		return o.Refusal.SMTPReply()
	case o.Delivered:
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Delivered to iCloud (" + m.ID + ")"}
	case o.Lost:
		return storeFailed(errLost)
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

// eightBitReader notes whether a message has bytes above 127, which need
// 8BITMIME upstream.
type eightBitReader struct {
	r    io.Reader
	seen bool
}

func (e *eightBitReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if !e.seen {
		for _, b := range p[:n] {
			if b >= 0x80 {
				e.seen = true
				break
			}
		}
	}
	return n, err
}

// accessListener turns away clients outside the allowed networks before
// they see a greeting, so the relay cannot be used as an open relay.
// It also caps concurrent connections and logs clients that time out.
type accessListener struct {
	net.Listener
	srv *Server
}

func (l *accessListener) Accept() (net.Conn, error) {
	s := l.srv
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		if !allowed(s.cfg.Allow, ap.Addr().Unmap()) {
			s.log.Warn().Str("stage", "accept").Str("client", c.RemoteAddr().String()).
				Str("remedy", "Add the client's network to listen.allow (and set [[listen.users]]) if it should be able to send.").
				Msg("connection refused: address not in listen.allow")
			go refuse(c, "554 5.7.1 Your address is not allowed to use this relay")
			continue
		}
		if n := s.conns.Add(1); s.cfg.MaxConnections > 0 && n > int64(s.cfg.MaxConnections) {
			s.conns.Add(-1)
			s.log.Warn().Str("stage", "accept").Str("client", c.RemoteAddr().String()).Int("max_connections", s.cfg.MaxConnections).
				Str("remedy", "A client opens too many connections at once; raise listen.max_connections if that is expected.").
				Msg("connection refused: too many connections")
			go refuse(c, "421 4.7.0 Too many connections to this relay; try again shortly")
			continue
		}
		return &clientConn{Conn: c, srv: s}, nil
	}
}

func refuse(c net.Conn, reply string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, reply+"\r\n")
	c.Close()
}

// clientConn counts the connection, logs a client that went silent, and
// holds the server's replies until it next reads (or closes): go-smtp
// writes a reply a line at a time (eleven writes for EHLO), which costs a
// system call and a wake-up of the client per line. A request-response
// server always reads or closes after replying, so nothing waits long.
type clientConn struct {
	net.Conn
	srv    *Server
	closed atomic.Bool

	mu  sync.Mutex
	out []byte // replies not yet sent
}

// maxHeldReply bounds what clientConn holds back; more is sent at once.
const maxHeldReply = 16 << 10

func (c *clientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.out)+len(b) > maxHeldReply {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) > maxHeldReply {
			return c.Conn.Write(b)
		}
	}
	c.out = append(c.out, b...)
	return len(b), nil
}

func (c *clientConn) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	return err
}

// SetWriteDeadline and SetDeadline first send what is held, under the
// deadline it was written under (crypto/tls sets an expired one when it
// closes, after its last alert).
func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.flush()
	return c.Conn.SetWriteDeadline(t)
}

func (c *clientConn) SetDeadline(t time.Time) error {
	c.flush()
	return c.Conn.SetDeadline(t)
}

func (c *clientConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *clientConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(b)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.srv.log.Warn().Str("stage", "accept").Str("client", c.RemoteAddr().String()).Dur("timeout", c.srv.cfg.Timeout).
			Msg("client connection timed out; closed")
	}
	return n, err
}

func (c *clientConn) Close() error {
	c.flush() // the last reply (221, 421) still goes out
	if c.closed.CompareAndSwap(false, true) {
		c.srv.conns.Add(-1)
	}
	return c.Conn.Close()
}

func allowed(nets []netip.Prefix, a netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// errorLog routes go-smtp's internal errors into the structured log.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Printf(format string, v ...interface{}) {
	e.log.Debug().Str("stage", "accept").Msgf(format, v...)
}

func (e errorLog) Println(v ...interface{}) {
	e.log.Debug().Str("stage", "accept").Msg(fmt.Sprint(v...))
}
