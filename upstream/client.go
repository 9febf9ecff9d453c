package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config is what the client needs to reach the upstream.
type Config struct {
	Host         string
	StartTLSPort int // STARTTLS, tried first (587)
	TLSPort      int // implicit TLS, the fallback (465)
	Username     string
	Password     string
	RootCAs      *x509.CertPool // nil: the system's roots, plus CAFile's
	// CAFile holds more trusted CA certificates (PEM). They are loaded, with
	// the system's roots, at the first connection: an idle relay that has
	// not yet connected anywhere holds neither.
	CAFile         string
	HeloName       string // this machine's name, sent in EHLO
	ConnectTimeout time.Duration
	Timeout        time.Duration // bound on every single read and write
	// ReprobeInterval is how long the fallback port stays first before the
	// STARTTLS port is tried again.
	ReprobeInterval time.Duration
	// Resolver looks up Host (nil: the system's). Tests give one that asks
	// a stand-in name server on loopback.
	Resolver *net.Resolver
	// Trace, if set, is told of every stage passed; the demo and doctor show it.
	Trace func(Event)
	// Connection reuse: up to MaxIdle logged-in sessions wait up to
	// IdleTimeout for the next message, each carrying at most
	// MaxMessagesPerConnection messages. IdleTimeout 0 turns reuse off.
	MaxIdle                  int
	IdleTimeout              time.Duration
	MaxMessagesPerConnection int
	// AttemptTimeout bounds one whole delivery attempt (0: no bound).
	AttemptTimeout time.Duration
}

// Event is one stage passed during a delivery, or a port given up on.
type Event struct {
	Stage  Stage
	Port   int
	Detail string
	Err    *Error // set when the port failed and the other one is tried next
	// Switched: a delivery's connection works on Port after Err's port
	// failed; the client keeps using Port (ReprobeInterval).
	Switched bool
}

// Message is one delivery: envelope, size and a reader of the raw message.
type Message struct {
	From     string
	To       []string
	Size     int64
	Body     io.Reader // the whole message; an io.Seeker can be sent again
	UTF8     bool      // the envelope or headers need SMTPUTF8
	EightBit bool      // the content has 8-bit bytes: needs 8BITMIME
	// Done, when set, is called once with the message's outcome as soon as
	// it is final: in a batch, before the next message's reply is read, so
	// that the caller can file a delivered message at once (a crash then
	// sends again only what was in flight, not the whole batch).
	Done func(Delivery)

	read     bool // Body has been read from
	finished bool // Done was called
}

// finish reports d, m's final outcome, to Done (once).
func (m *Message) finish(d Delivery) {
	if m.Done != nil && !m.finished {
		m.finished = true
		m.Done(d)
	}
}

// content returns the body from its start: a message tried again on
// another connection may have been read on the first.
func (m *Message) content() (io.Reader, error) {
	if m.read {
		sk, ok := m.Body.(io.Seeker)
		if !ok {
			return nil, errors.New("the message was partly read and cannot be read again")
		}
		if _, err := sk.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	m.read = true
	return m.Body, nil
}

// Result tells, for a delivery that reached the RCPT stage, which
// recipients the server refused. The others got the message when Send
// returns a nil error.
type Result struct {
	Port    int
	Refused map[string]*Error
}

// Client sends messages upstream. It is safe for concurrent use.
type Client struct {
	cfg  Config
	pool pool

	tlsMu  sync.Mutex
	tlsCfg *tls.Config // built at the first connection

	mu         sync.Mutex
	preferred  int
	fellBackAt time.Time
	maxSize    int64 // the server's advertised SIZE, 0 until known
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	return &Client{cfg: cfg, preferred: cfg.StartTLSPort}
}

// tlsConfig returns the TLS settings, loading the trusted roots the first
// time. With no CA file, RootCAs nil means "the system's roots", which
// crypto/tls itself loads when first needed.
func (c *Client) tlsConfig() (*tls.Config, error) {
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	if c.tlsCfg != nil {
		return c.tlsCfg, nil
	}
	roots := c.cfg.RootCAs
	if roots == nil && c.cfg.CAFile != "" {
		var err error
		if roots, err = x509.SystemCertPool(); err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if err := addCAFile(roots, c.cfg.CAFile); err != nil {
			return nil, err
		}
	}
	c.tlsCfg = &tls.Config{ServerName: c.cfg.Host, RootCAs: roots, MinVersion: tls.VersionTLS12}
	return c.tlsCfg, nil
}

func addCAFile(pool *x509.CertPool, caFile string) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("read CA file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	return nil
}

// MaxSize returns the largest message the server said it accepts, or 0
// while unknown.
func (c *Client) MaxSize() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxSize
}

// PortMemory is what a client learned about the ports: the one that works
// and since when it fell back to it.
type PortMemory struct {
	Port  int
	Since time.Time
}

// PortMemory returns what c learned about the ports.
func (c *Client) PortMemory() PortMemory {
	c.mu.Lock()
	defer c.mu.Unlock()
	return PortMemory{Port: c.preferred, Since: c.fellBackAt}
}

// Remember takes over what another client learned (the one a reload
// replaced), so that a blocked 587 is not waited for again. Memory about
// other ports is ignored.
func (c *Client) Remember(m PortMemory) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Port == c.cfg.TLSPort {
		c.preferred, c.fellBackAt = m.Port, m.Since
	}
}

// Preferred returns the port the next delivery tries first.
func (c *Client) Preferred() int {
	return c.portOrder()[0]
}

func (c *Client) portOrder() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.preferred == c.cfg.TLSPort && time.Since(c.fellBackAt) < c.cfg.ReprobeInterval {
		return []int{c.cfg.TLSPort, c.cfg.StartTLSPort}
	}
	return []int{c.cfg.StartTLSPort, c.cfg.TLSPort}
}

// remember records the port that worked. Falling back restarts the reprobe
// clock, so a blocked 587 costs one timeout per ReprobeInterval, not per message.
func (c *Client) remember(port int, fellBack bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.preferred = port
	if fellBack {
		c.fellBackAt = time.Now()
	}
}

func (c *Client) trace(stage Stage, port int, format string, args ...any) {
	if c.cfg.Trace != nil {
		c.cfg.Trace(Event{Stage: stage, Port: port, Detail: fmt.Sprintf(format, args...)})
	}
}

// Delivery is one message's outcome: a nil Err means every recipient not
// in Result.Refused has the message; otherwise Err is an *Error.
type Delivery struct {
	Result *Result
	Err    error
	// RoundTrip is how long the server took to answer the message's MAIL
	// when nothing was sent before it on the connection (the first of a
	// batch): the network's round trip and the server's quickest reply,
	// not the work the data costs it (0 when not measured).
	RoundTrip time.Duration
}

// Send delivers m. A nil error means every recipient not in Result.Refused
// has the message. A non-nil error is an *Error.
func (c *Client) Send(ctx context.Context, m *Message) (*Result, error) {
	d := c.SendBatch(ctx, []*Message{m})[0]
	return d.Result, d.Err
}

// SendBatch delivers msgs back to back over one connection (pipelined
// where the server allows), with one outcome per message.
//
// An idle logged-in session is reused when there is one; otherwise a new
// connection is opened. A reused connection found dead before it accepted
// anything (closed, or closing with a 421, as servers do with idle ones)
// is replaced silently; a connection that breaks after some messages
// hands the rest to a new one.
func (c *Client) SendBatch(ctx context.Context, msgs []*Message) []Delivery {
	if c.cfg.AttemptTimeout > 0 {
		// Bounds a server that drips its replies a byte at a time, which
		// the per-read timeout alone would let go on for ever.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout*time.Duration(len(msgs)))
		defer cancel()
	}
	out := make([]Delivery, len(msgs))
	for _, m := range msgs {
		m.finished = false
	}
	for done := 0; done < len(msgs); {
		s, reused, err := c.session(ctx)
		if err != nil {
			for i := done; i < len(msgs); i++ {
				out[i] = Delivery{Err: err}
			}
			break
		}
		n := s.sendBatch(msgs[done:], out[done:])
		broken := s.broken
		c.release(s, n)
		done += n
		if broken != nil && n == 0 && !reused {
			// A new connection that accepted nothing: that is the answer
			// for the rest too.
			for i := done + 1; i < len(msgs); i++ {
				out[i] = Delivery{Err: out[done].Err}
			}
			break
		}
	}
	for i, m := range msgs {
		m.finish(out[i]) // those that no reply ended
	}
	return out
}

// session returns a logged-in session: an idle one (reset if its last
// transaction failed) or a new one.
func (c *Client) session(ctx context.Context) (s *session, reused bool, err error) {
	for {
		for s := c.take(ctx); s != nil; s = c.take(ctx) {
			// RSET only after a failed transaction: a completed one leaves the
			// server ready, and a round trip per message is not free.
			if s.dirty && s.cmd(250, "RSET") != nil {
				s.close() // closed by the server while idle: try another
				continue
			}
			return s, true, nil
		}
		// A spare being logged in is nearer than a login of our own.
		done := c.warmingDone()
		if done == nil {
			break
		}
		select {
		case <-done:
		case <-ctx.Done():
			return nil, false, Classify(StageConnect, 0, ctx.Err())
		}
	}
	s, err = c.connect(ctx, true)
	return s, false, err
}

// release returns s to the pool after it carried n messages, or closes it.
func (c *Client) release(s *session, n int) {
	s.stop() // unbind from this attempt's context before pooling
	s.sent += n
	if limit := c.cfg.MaxMessagesPerConnection; limit > 0 && c.cfg.IdleTimeout > 0 && s.broken == nil && !s.spared && s.sent >= limit-spareAhead(limit) {
		s.spared = true
		go c.warm()
	}
	if s.broken == nil {
		c.put(s)
	} else {
		s.close()
	}
}

// Probe checks cheaply that the upstream answers: connect, TLS where the
// port starts with it, and the greeting. It neither logs in nor sends.
func (c *Client) Probe(ctx context.Context) error {
	s, err := c.connect(ctx, false)
	if err != nil {
		return err
	}
	s.healthy = true
	s.close()
	return nil
}

// connect opens a session on the first port that works.
func (c *Client) connect(ctx context.Context, full bool) (*session, error) {
	addrs, err := c.Lookup(ctx)
	if err != nil {
		return nil, err
	}
	if addrs[0] != c.cfg.Host {
		c.trace(StageDNS, 0, "%s is %s", c.cfg.Host, strings.Join(addrs, ", "))
	}
	ports := c.portOrder()
	var first *Error
	for i, port := range ports {
		s, err := c.open(ctx, port, full)
		if err == nil {
			if full {
				c.remember(port, i > 0)
				if i > 0 && c.cfg.Trace != nil {
					c.cfg.Trace(Event{Stage: first.Stage, Port: port, Err: first, Switched: true,
						Detail: fmt.Sprintf("port %d failed (%s); port %d works", first.Port, first.Text, port)})
				}
			}
			return s, nil
		}
		if ctx.Err() != nil || !err.portLevel() {
			return nil, err
		}
		if first == nil {
			first = err
			if c.cfg.Trace != nil {
				c.cfg.Trace(Event{Stage: err.Stage, Port: port, Err: err,
					Detail: fmt.Sprintf("port %d failed (%s); trying port %d", port, err.Text, ports[1])})
			}
			continue
		}
		// Both ports failed: say so, keeping the first port's stage, which
		// is usually the more telling one.
		both := *first
		both.Text = fmt.Sprintf("port %d: %s; port %d: %s", first.Port, first.Text, port, err.Text)
		if blocked(first) && blocked(err) {
			both.advise(fmt.Sprintf("Neither port %d nor port %d works from here: a firewall, VPN, antivirus or the ISP blocks outgoing mail — allow outgoing TCP %d and %d for this program, or try another network.", first.Port, port, first.Port, port))
		}
		return nil, &both
	}
	return nil, first
}

// blocked reports a port that looks filtered: refused, or silent.
func blocked(e *Error) bool {
	var ne net.Error
	silent := errors.As(e.Err, &ne) && ne.Timeout()
	return e.Stage == StageConnect || (silent && (e.Stage == StageGreeting || e.Stage == StageTLS))
}

// session is one authenticated (or, for probes, greeted) upstream connection.
type session struct {
	c      *Client
	port   int
	raw    net.Conn
	client *smtp.Client
	tls    *tls.Conn
	// After login the transactions are this package's own (go-smtp's
	// client does not pipeline): replies are read from r, commands and
	// data buffered in w; buf is the data copy buffer.
	r    *textproto.Reader
	w    *bufio.Writer
	buf  []byte
	stop func() bool
	// healthy sessions end with QUIT; after a failure the server may be
	// hung, so the connection is just closed.
	healthy   bool
	dirty     bool        // the last transaction failed: RSET before reuse
	broken    error       // why the connection cannot carry more, if so
	sent      int         // messages sent on this connection
	spared    bool        // a spare is being or was logged in to follow it (warm)
	idleTimer *time.Timer // closes the session when it idles too long in the pool
}

func (s *session) close() {
	if s.healthy && s.w != nil {
		s.cmd(221, "QUIT")
	}
	s.stop()
	s.raw.Close()
}

func (c *Client) open(ctx context.Context, port int, full bool) (_ *session, rerr *Error) {
	addr := net.JoinHostPort(c.cfg.Host, strconv.Itoa(port))
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, Resolver: c.cfg.Resolver}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, Classify(StageConnect, port, err)
	}
	c.trace(StageConnect, port, "connected to %s", addr)
	c.pool.mu.Lock()
	c.pool.connections++
	c.pool.mu.Unlock()
	s := &session{c: c, port: port, raw: raw}
	// Cancelling ctx (shutdown) unblocks any read or write at once.
	s.stop = context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if rerr != nil {
			s.close()
		}
	}()
	conn := &timeoutConn{Conn: raw, timeout: c.cfg.Timeout}

	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return nil, Classify(StageTLS, port, err)
	}
	var tlsConn *tls.Conn
	if port == c.cfg.TLSPort {
		tlsConn = tls.Client(conn, tlsCfg)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			return nil, Classify(StageTLS, port, err)
		}
		c.traceTLS(port, tlsConn)
		s.client = smtp.NewClient(tlsConn)
		writes := conn.writeCount()
		if err := s.client.Hello(c.cfg.HeloName); err != nil {
			stage := StageEHLO
			if conn.writeCount() == writes {
				stage = StageGreeting // nothing sent yet: the greeting itself failed
			}
			s.client = nil
			return nil, Classify(stage, port, err)
		}
		c.trace(StageGreeting, port, "server greeted")
		c.trace(StageEHLO, port, "EHLO %s accepted", c.cfg.HeloName)
	} else {
		if tlsConn, rerr = c.startTLS(ctx, conn, port, tlsCfg); rerr != nil {
			return nil, rerr
		}
		s.client = smtp.NewClient(&greetedConn{Conn: tlsConn, r: io.MultiReader(strings.NewReader("220 TLS started\r\n"), tlsConn)})
		if err := s.client.Hello(c.cfg.HeloName); err != nil {
			s.client = nil
			return nil, Classify(StageEHLO, port, err)
		}
		c.trace(StageEHLO, port, "EHLO %s accepted", c.cfg.HeloName)
	}
	s.tls = tlsConn
	s.r = textproto.NewReader(bufio.NewReader(tlsConn))
	s.w = bufio.NewWriterSize(tlsConn, 16<<10) // one TLS record per flush of a full buffer
	if !full {
		return s, nil
	}
	if ok, v := s.client.Extension("SIZE"); ok {
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n > 0 {
			c.mu.Lock()
			c.maxSize = n
			c.mu.Unlock()
		}
	}
	// Belt and braces: never hand the password to a connection whose
	// certificate was not verified, whatever the configuration says.
	if st := tlsConn.ConnectionState(); !st.HandshakeComplete || len(st.VerifiedChains) == 0 {
		return nil, Classify(StageTLS, port, errors.New("TLS connection is not verified; refusing to log in"))
	}
	c.pool.mu.Lock()
	c.pool.logins++
	c.pool.mu.Unlock()
	if err := c.auth(s.client); err != nil {
		return nil, Classify(StageAuth, port, err)
	}
	c.trace(StageAuth, port, "logged in as %s", c.cfg.Username)
	return s, nil
}

// startTLS runs greeting, EHLO and STARTTLS by hand: go-smtp's client would
// send EHLO as "localhost" before STARTTLS, and iCloud deserves a real name.
func (c *Client) startTLS(ctx context.Context, conn *timeoutConn, port int, tlsCfg *tls.Config) (*tls.Conn, *Error) {
	// Bounded: a hostile server cannot feed an endless reply before TLS.
	tp := textproto.NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{io.LimitReader(conn, 64<<10), conn, conn})
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, Classify(StageGreeting, port, eofMeansClosed(err))
	}
	c.trace(StageGreeting, port, "server greeted")
	_, ext, err := command(tp, 250, "EHLO %s", c.cfg.HeloName)
	if err != nil {
		return nil, Classify(StageEHLO, port, eofMeansClosed(err))
	}
	if !hasExtension(ext, "STARTTLS") {
		return nil, Classify(StageStartTLS, port, errors.New("the server did not offer STARTTLS; the relay never sends without TLS"))
	}
	if _, _, err := command(tp, 220, "STARTTLS"); err != nil {
		return nil, Classify(StageStartTLS, port, eofMeansClosed(err))
	}
	tlsConn := tls.Client(conn, tlsCfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return nil, Classify(StageTLS, port, err)
	}
	c.traceTLS(port, tlsConn)
	return tlsConn, nil
}

func (c *Client) traceTLS(port int, conn *tls.Conn) {
	if c.cfg.Trace == nil {
		return
	}
	st := conn.ConnectionState()
	c.trace(StageTLS, port, "%s, certificate for %s verified (%s)", tls.VersionName(st.Version), c.cfg.Host, certSummary(st.PeerCertificates[0]))
}

func command(tp *textproto.Conn, expect int, format string, args ...any) (int, string, error) {
	id, err := tp.Cmd(format, args...)
	if err != nil {
		return 0, "", err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	return tp.ReadResponse(expect)
}

func hasExtension(ehlo, name string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], name) {
			return true
		}
	}
	return false
}

var errClosedEarly = errors.New("connection closed by the server")

func eofMeansClosed(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", errClosedEarly, err)
	}
	return err
}

func (c *Client) auth(client *smtp.Client) error {
	ok, mechs := client.Extension("AUTH")
	if !ok {
		return errors.New("the server offers no login (AUTH) on this connection")
	}
	var a sasl.Client
	switch m := " " + strings.ToUpper(mechs) + " "; {
	case strings.Contains(m, " PLAIN "):
		a = sasl.NewPlainClient("", c.cfg.Username, c.cfg.Password)
	case strings.Contains(m, " LOGIN "):
		a = sasl.NewLoginClient(c.cfg.Username, c.cfg.Password)
	default:
		return fmt.Errorf("the server offers no supported login mechanism (offers %s; need PLAIN or LOGIN)", mechs)
	}
	return eofMeansClosed(client.Auth(a))
}

// txn is one message's transaction on a session.
type txn struct {
	m           *Message
	res         *Result
	err         error         // how it ended, when not delivered
	refusal     *Error        // the first recipient refused
	sent        bool          // its MAIL went out
	data        bool          // 354 with recipients left: the data follows
	dot         bool          // 354 with none left: an empty message ends it
	rset        bool          // an RSET went before its MAIL (chunked batches)
	mailReplied bool          // the reply to its MAIL was read (chunked batches)
	n           int64         // data bytes sent
	started     time.Time     // when its MAIL was written
	first       bool          // nothing went before it on the connection
	roundTrip   time.Duration // its MAIL to the reply, if first
}

// delivery is t's outcome as it stands.
func (t *txn) delivery() Delivery {
	return Delivery{Result: t.res, Err: t.err, RoundTrip: t.roundTrip}
}

// mailAnswered notes the time the reply to t's MAIL took, when t went
// first (Delivery.RoundTrip).
func (t *txn) mailAnswered() {
	if t.first {
		t.roundTrip = time.Since(t.started)
	}
}

// reset reports whether the server still holds t's transaction: it ended
// before the data (the end of the data ends a transaction either way).
func (t *txn) reset() bool { return t.sent && t.err != nil && !t.data && !t.dot }

// send runs one mail transaction.
func (s *session) send(m *Message) (*Result, error) {
	out := make([]Delivery, 1)
	s.sendBatch([]*Message{m}, out)
	return out[0].Result, out[0].Err
}

// sendBatch runs the transactions of msgs back to back, fills out, and
// returns how many are finished. It stops early only when the connection
// breaks (s.broken): the message it was on, out[n], was then not accepted
// (its data had not gone out), and those after it were not tried.
//
// When the server offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA
// go out together, and a message's data goes out with the next message's
// MAIL, RCPT and DATA (message content may start a group): one round trip
// per message on a busy connection, two for a lone one. Without it, the
// same steps go one at a time. Replies are read in order either way.
func (s *session) sendBatch(msgs []*Message, out []Delivery) int {
	pipelined, _ := s.client.Extension("PIPELINING")
	txs := make([]*txn, len(msgs))
	chunked, _ := s.client.Extension("CHUNKING")
	for i, m := range msgs {
		txs[i] = &txn{m: m, res: &Result{Port: s.port, Refused: map[string]*Error{}}, first: i == 0}
		chunked = chunked && m.Size <= maxChunk
	}
	if pipelined && chunked {
		return s.sendChunked(txs, out)
	}
	s.begin(txs[0], pipelined)
	for i, t := range txs {
		if t.sent {
			s.readBegin(t, pipelined)
		}
		out[i] = t.delivery()
		if s.broken != nil {
			return i
		}
		switch {
		case t.data:
			s.writeData(t)
		case t.dot:
			// A server that says 354 with no recipient left gets an empty
			// message, which it must refuse (RFC 2920, section 3.1).
			s.w.WriteString(".\r\n")
		}
		var next *txn
		if i+1 < len(txs) && s.broken == nil {
			next = txs[i+1]
		}
		if pipelined && next != nil {
			if t.reset() {
				s.w.WriteString("RSET\r\n")
			}
			s.begin(next, pipelined)
		}
		if (t.data || t.dot) && s.broken == nil {
			s.readEnd(t)
		}
		out[i] = t.delivery()
		t.m.finish(out[i]) // final: it goes no further, here or elsewhere
		if s.broken != nil || next == nil {
			s.dirty = t.reset()
			return i + 1
		}
		if t.reset() {
			if !pipelined {
				s.w.WriteString("RSET\r\n")
			}
			if err := s.read(250); err != nil {
				// Out of step (with PIPELINING the next commands are
				// already out): this connection carries no more.
				s.fail(err)
				return i + 1
			}
		}
		if !pipelined {
			s.begin(next, pipelined)
		}
	}
	return len(txs)
}

// maxChunk bounds a message sent with BDAT (RFC 3030): its content is read
// into memory to know its length. Larger ones go with DATA.
const maxChunk = 256 << 10

// sendChunked sends every message of the batch in one go when the server
// offers CHUNKING and PIPELINING: each message is MAIL, RCPT..., "BDAT n
// LAST" and its content, with no 354 to wait for, and each after the first
// is preceded by RSET so that one message's failure cannot leave the next
// in a half-open transaction. The whole batch costs one round trip. As in
// sendBatch, a break stops it: a message whose MAIL got no reply (or a
// 421) was not taken, and neither were those after it.
func (s *session) sendChunked(txs []*txn, out []Delivery) int {
	first := true
	for _, t := range txs {
		content := s.chunk(t)
		if t.err != nil {
			continue
		}
		if !first {
			s.w.WriteString("RSET\r\n")
		}
		t.sent, t.rset, first, t.started = true, !first, false, time.Now()
		fmt.Fprintf(s.w, "MAIL FROM:<%s>%s\r\n", t.m.From, s.mailParams(t.m))
		for _, rcpt := range t.m.To {
			fmt.Fprintf(s.w, "RCPT TO:<%s>\r\n", rcpt)
		}
		fmt.Fprintf(s.w, "BDAT %d LAST\r\n", len(content))
		s.w.Write(content)
		t.n = int64(len(content))
	}
	for i, t := range txs {
		if t.sent {
			s.readChunked(t)
		}
		out[i] = t.delivery()
		if s.broken == nil {
			t.m.finish(out[i])
			continue
		}
		if !t.mailReplied {
			// Replies come in order: the server took nothing from this
			// message on (a 421, or a connection found dead); they may go
			// on another connection.
			return i
		}
		// Its reply says what became of it (a break before the last one is
		// an error: its content went out, whether it was kept is unknown).
		t.m.finish(out[i])
		return i + 1
	}
	last := txs[len(txs)-1]
	s.dirty = last.err != nil
	return len(txs)
}

// chunk checks what t's message needs and returns its content with CRLF
// line ends, ending in CRLF; on a problem t.err says what.
func (s *session) chunk(t *txn) []byte {
	if s.check(t); t.err != nil {
		return nil
	}
	body, err := t.m.content()
	var raw []byte
	if err == nil {
		// Sized from the start (the size is known): no regrowing copies.
		var b bytes.Buffer
		b.Grow(int(min(max(t.m.Size, 0), maxChunk)) + bytes.MinRead)
		_, err = b.ReadFrom(io.LimitReader(body, maxChunk+1))
		raw = b.Bytes()
	}
	if err == nil && len(raw) > maxChunk {
		err = fmt.Errorf("the message is larger than its size said (%d bytes)", t.m.Size)
	}
	if err != nil {
		t.err = Classify(StageData, s.port, err)
		return nil
	}
	content := make([]byte, 0, len(raw)+64)
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			content = append(content, raw...)
			break
		}
		content = append(content, raw[:i]...)
		if i == 0 && (len(content) == 0 || content[len(content)-1] != '\r') || i > 0 && raw[i-1] != '\r' {
			content = append(content, '\r')
		}
		content = append(content, '\n')
		raw = raw[i+1:]
	}
	if len(content) > 0 && !bytes.HasSuffix(content, []byte("\r\n")) {
		if content[len(content)-1] == '\r' {
			content = append(content, '\n')
		} else {
			content = append(content, "\r\n"...)
		}
	}
	return content
}

// readChunked reads the replies to one message of a chunked batch.
func (s *session) readChunked(t *txn) {
	if t.rset {
		if err := s.read(250); err != nil {
			// Out of step if the server said no: the rest cannot be read.
			s.fail(err)
			t.err = Classify(StageMail, s.port, eofMeansClosed(err))
			return
		}
	}
	m := t.m
	mailErr := s.read(250)
	t.mailAnswered()
	if s.broken != nil {
		t.err = Classify(StageMail, s.port, eofMeansClosed(mailErr))
		return
	}
	t.mailReplied = true
	if mailErr == nil {
		s.c.trace(StageMail, s.port, "sender <%s> accepted", m.From)
	}
	for _, rcpt := range m.To {
		err := s.read(25)
		switch {
		case s.broken != nil:
			t.err = Classify(StageRcpt, s.port, eofMeansClosed(err))
			return
		case mailErr != nil:
		case err == nil:
			s.c.trace(StageRcpt, s.port, "recipient <%s> accepted", rcpt)
		default:
			e := Classify(StageRcpt, s.port, err)
			t.res.Refused[rcpt] = e
			if t.refusal == nil {
				t.refusal = e
			}
			s.c.trace(StageRcpt, s.port, "recipient <%s> refused: %d %s", rcpt, e.Code, e.Text)
		}
	}
	err := s.read(250)
	switch {
	case mailErr != nil:
		t.err = Classify(StageMail, s.port, mailErr)
	case len(t.res.Refused) == len(m.To):
		t.err = t.refusal
	default:
		s.ended(t, err)
	}
}

// begin checks what t's message needs and writes its MAIL (with
// PIPELINING also every RCPT and DATA), unflushed.
func (s *session) begin(t *txn, pipelined bool) {
	if s.check(t); t.err != nil {
		return
	}
	m := t.m
	t.sent, t.started = true, time.Now()
	fmt.Fprintf(s.w, "MAIL FROM:<%s>%s\r\n", m.From, s.mailParams(m))
	if pipelined {
		for _, rcpt := range m.To {
			fmt.Fprintf(s.w, "RCPT TO:<%s>\r\n", rcpt)
		}
		s.w.WriteString("DATA\r\n")
	}
}

// check sets t.err when t's message cannot be sent on this connection.
func (s *session) check(t *txn) {
	m := t.m
	if len(m.To) == 0 {
		t.err = Classify(StageRcpt, s.port, &unsendable{text: "the message has no recipients", advice: "The sending program gave no recipient; fix its configuration."})
		return
	}
	for _, need := range []struct {
		ext  string
		need bool
		what string
	}{{"SMTPUTF8", m.UTF8, "non-ASCII addresses (SMTPUTF8)"}, {"8BITMIME", m.EightBit, "8-bit content (8BITMIME)"}} {
		if ok, _ := s.client.Extension(need.ext); need.need && !ok {
			t.err = Classify(StageMail, s.port, &unsendable{text: "the message needs " + need.what + ", which the server does not offer",
				advice: "Send the message with a client that encodes it for 7-bit transport (quoted-printable or base64) and ASCII addresses."})
			return
		}
	}
	for _, a := range append([]string{m.From}, m.To...) {
		if strings.ContainsAny(a, "\r\n") {
			t.err = Classify(StageMail, s.port, &unsendable{text: fmt.Sprintf("address %q contains a line break", a),
				advice: "The sending program passed a malformed address; fix its configuration."})
			return
		}
	}
}

// readBegin reads the replies to MAIL, RCPT and DATA (writing RCPT and
// DATA first when not pipelined) and decides whether the data follows.
func (s *session) readBegin(t *txn, pipelined bool) {
	m := t.m
	err := s.read(250)
	t.mailAnswered()
	if err != nil {
		t.err = Classify(StageMail, s.port, eofMeansClosed(err))
		if pipelined && s.broken == nil {
			s.drain(len(m.To))
		}
		return
	}
	s.c.trace(StageMail, s.port, "sender <%s> accepted", m.From)
	for _, rcpt := range m.To {
		if !pipelined {
			fmt.Fprintf(s.w, "RCPT TO:<%s>\r\n", rcpt)
		}
		err := s.read(25)
		switch {
		case err == nil:
			s.c.trace(StageRcpt, s.port, "recipient <%s> accepted", rcpt)
		case s.broken == nil:
			e := Classify(StageRcpt, s.port, err)
			t.res.Refused[rcpt] = e
			if t.refusal == nil {
				t.refusal = e
			}
			s.c.trace(StageRcpt, s.port, "recipient <%s> refused: %d %s", rcpt, e.Code, e.Text)
		default:
			t.err = Classify(StageRcpt, s.port, eofMeansClosed(err))
			return
		}
	}
	allRefused := len(t.res.Refused) == len(m.To)
	if allRefused && !pipelined {
		t.err = t.refusal
		return
	}
	if !pipelined {
		s.w.WriteString("DATA\r\n")
	}
	err = s.read(354)
	switch {
	case err == nil && allRefused:
		t.err, t.dot = t.refusal, true
	case err == nil:
		t.data = true
	case allRefused && s.broken == nil:
		t.err = t.refusal
	default:
		t.err = Classify(StageData, s.port, eofMeansClosed(err))
	}
}

// writeData writes t's message, dot-stuffed and ended; what is left in
// the buffer goes out with the next flush (and the next message's commands).
func (s *session) writeData(t *txn) {
	if s.buf == nil {
		s.buf = make([]byte, 16<<10)
	}
	body, err := t.m.content()
	if err != nil {
		// Nothing of it went out, but the server waits for data: the
		// connection is of no further use.
		t.err = Classify(StageData, s.port, err)
		s.fail(err)
		return
	}
	d := &dotWriter{w: s.w, last: '\n'}
	n, err := d.copyFrom(body, s.buf)
	if err == nil {
		err = d.end()
	}
	t.n = n
	if err != nil {
		t.err = Classify(StageData, s.port, fmt.Errorf("after %d bytes: %w", n, eofMeansClosed(err)))
		s.fail(err)
	}
}

// readEnd reads the reply to the end of the data.
func (s *session) readEnd(t *txn) {
	if err := s.read(250); !t.dot { // after an empty message, t.err is the recipients' refusal
		s.ended(t, err)
	}
}

// ended files err, the reply to the end of t's data.
func (s *session) ended(t *txn, err error) {
	switch {
	case err != nil && s.broken != nil:
		t.err = Classify(StageData, s.port, fmt.Errorf("after %d bytes: %w", t.n, eofMeansClosed(err)))
	case err != nil:
		t.err = Classify(StageData, s.port, err)
	default:
		s.c.trace(StageData, s.port, "message accepted (%d bytes)", t.n)
	}
}

// mailParams are the MAIL FROM parameters the server offers and m needs.
func (s *session) mailParams(m *Message) string {
	var p strings.Builder
	if ok, _ := s.client.Extension("8BITMIME"); ok {
		p.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := s.client.Extension("SIZE"); ok && m.Size > 0 {
		fmt.Fprintf(&p, " SIZE=%d", m.Size)
	}
	if m.UTF8 {
		p.WriteString(" SMTPUTF8")
	}
	return p.String()
}

// cmd sends one command and reads its reply.
func (s *session) cmd(expect int, format string, args ...any) error {
	fmt.Fprintf(s.w, format+"\r\n", args...)
	return s.read(expect)
}

// read sends what is buffered and reads one reply. A broken connection,
// or a 421 (the server is closing it), is remembered in s.broken.
func (s *session) read(expect int) error {
	if err := s.w.Flush(); err != nil {
		s.fail(err)
		return err
	}
	err := s.reply(expect)
	var se *smtp.SMTPError
	if err != nil && (!errors.As(err, &se) || se.Code == 421) {
		s.fail(err)
	}
	return err
}

// fail records that the connection cannot carry more.
func (s *session) fail(err error) {
	if s.broken == nil {
		s.broken = err
	}
}

// reply reads one reply; a reply other than expect (a code or its first
// digits) is an *smtp.SMTPError.
func (s *session) reply(expect int) error {
	_, _, err := s.r.ReadResponse(expect)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		se := &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
		if first, rest, ok := strings.Cut(pe.Msg, " "); ok {
			if ec, ok := parseEnhanced(first); ok {
				se.EnhancedCode, se.Message = ec, rest
			}
		}
		return se
	}
	return err
}

// drain reads the replies to the rest of a pipelined transaction whose
// MAIL was refused, so the connection is back in step: n RCPT and DATA.
func (s *session) drain(rcpts int) {
	for i := 0; i < rcpts && s.broken == nil; i++ {
		s.read(25)
	}
	if s.broken == nil && s.read(354) == nil {
		s.w.WriteString(".\r\n")
		s.read(250)
	}
}

// dotWriter writes message data dot-stuffed (RFC 5321, section 4.5.2) with
// bare LF made CRLF, a chunk at a time; net/textproto's works a byte at a
// time, which showed in every message's cost.
type dotWriter struct {
	w    *bufio.Writer
	last byte // the last byte written; '\n' at the start of a line
}

func (d *dotWriter) copyFrom(r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if werr := d.write(buf[:n]); werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (d *dotWriter) write(p []byte) error {
	for len(p) > 0 {
		if d.last == '\n' && p[0] == '.' {
			d.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.w.Write(p)
			d.last = p[len(p)-1]
			break
		}
		d.w.Write(p[:i])
		if prev := d.last; (i > 0 && p[i-1] != '\r') || (i == 0 && prev != '\r') {
			d.w.WriteByte('\r')
		}
		d.w.WriteByte('\n')
		d.last = '\n'
		p = p[i+1:]
	}
	// bufio.Writer's errors are sticky: one check covers every write.
	_, err := d.w.Write(nil)
	return err
}

// end ends the data with CRLF "." CRLF, still buffered.
func (d *dotWriter) end() error {
	switch d.last {
	case '\r':
		d.w.WriteByte('\n')
	case '\n':
	default:
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	_, err := d.w.Write(nil)
	return err
}

// timeoutConn bounds every read and write by its own deadline. It owns the
// deadlines: go-smtp clears them after each command, which would leave the
// message upload and TLS records unbounded.
type timeoutConn struct {
	net.Conn
	timeout time.Duration
	mu      sync.Mutex
	writes  int
	unread  int // bytes read since the last write: one reply's size
}

// maxReply bounds what the server may send in answer to one command; a
// hostile server cannot fill the relay's memory with an endless reply.
const maxReply = 1 << 20

var errReplyTooLarge = errors.New("the server's reply is larger than 1 MiB")

func (c *timeoutConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.unread += n
	over := c.unread > maxReply
	c.mu.Unlock()
	if over {
		return n, errReplyTooLarge
	}
	return n, err
}

func (c *timeoutConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.unread = 0
	c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

func (c *timeoutConn) writeCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

func (c *timeoutConn) SetDeadline(time.Time) error      { return nil }
func (c *timeoutConn) SetReadDeadline(time.Time) error  { return nil }
func (c *timeoutConn) SetWriteDeadline(time.Time) error { return nil }

// greetedConn replays a greeting: after STARTTLS the server sends none
// (RFC 3207), but go-smtp's client always reads one first.
type greetedConn struct {
	net.Conn
	r io.Reader
}

func (g *greetedConn) Read(b []byte) (int, error) { return g.r.Read(b) }
