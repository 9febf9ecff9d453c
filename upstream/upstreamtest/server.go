// Package upstreamtest runs an in-process stand-in for iCloud's submission
// server, in the spirit of httptest: a STARTTLS listener (like 587) and an
// implicit-TLS listener (like 465) on loopback, certificates from a throwaway
// CA, AUTH PLAIN/LOGIN over TLS only, a sender check against the account and
// its aliases, a size limit, and faults to inject at every stage.
//
// Tests and the demo command use it; it never listens beyond 127.0.0.1.
package upstreamtest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/certs"
	"github.com/icloud-relay/icloud-relay/internal/saslserver"
)

// DefaultPassword is the stand-in account's password unless Options say otherwise.
const DefaultPassword = "abcd-efgh-ijkl-mnop"

// Options configure the stand-in account.
type Options struct {
	Username string   // default "demo@icloud.com"
	Password string   // default "abcd-efgh-ijkl-mnop"
	Aliases  []string // other addresses the account may send from
	MaxSize  int64    // advertised SIZE; default 20 MiB
	// NoSMTPUTF8 makes the stand-in lack SMTPUTF8, as some servers do.
	NoSMTPUTF8 bool
	// IdleTimeout closes connections idle this long (default 1 minute).
	IdleTimeout time.Duration
	// MaxTLSVersion, when set, caps TLS (e.g. tls.VersionTLS11 for an
	// outdated or downgraded server).
	MaxTLSVersion uint16
	// RSA serves an RSA 2048 certificate instead of ECDSA P-256: costlier
	// handshakes, as with many public mail services.
	RSA bool
	// Latency delays everything the stand-in sends by this much: a round
	// trip as across a network (iCloud is tens of milliseconds away).
	Latency time.Duration
}

// Faults are injected misbehaviour. The zero value is a healthy server.
type Faults struct {
	Greeting      *smtp.SMTPError            // sent instead of the 220 greeting, then hang up
	AuthFail      bool                       // every login refused with 535 5.7.8
	Auth          *smtp.SMTPError            // every login answered with this (e.g. 454)
	Mail          *smtp.SMTPError            // reply to MAIL FROM
	Rcpt          map[string]*smtp.SMTPError // reply to RCPT TO, by address
	Data          *smtp.SMTPError            // reply after the message data
	DropAfterData bool                       // keep the message, hang up without a reply
	CloseMidData  bool                       // hang up in the middle of the upload
	BadCert       bool                       // certificate from an unknown CA
	WrongName     bool                       // certificate from the trusted CA, for another host
	Delay         time.Duration              // before every reply to MAIL, RCPT and DATA
	// Chaos: after the data, with these probabilities, answer 451 or keep
	// the message and hang up without a reply (which makes the sender's
	// retry a duplicate: the ambiguity of at-least-once delivery).
	TempFailRate, DropRate float64
}

// PortState is what a listener does with new connections.
type PortState int

const (
	PortUp        PortState = iota
	PortRefused             // nothing listens: connections are refused
	PortBlackhole           // connections are accepted and never answered
)

// Message is one message the stand-in accepted.
type Message struct {
	From string
	To   []string
	Data []byte
	Port int
}

// Server is a running stand-in.
type Server struct {
	Host         string // "127.0.0.1"; its certificate is valid for it and "localhost"
	StartTLSPort int
	TLSPort      int
	CA           *certs.CA

	opts     Options
	smtp     *smtp.Server
	gates    map[int]*gate
	good     tls.Certificate
	badCA    tls.Certificate
	wrongCN  tls.Certificate
	mu       sync.Mutex
	faults   Faults
	messages []Message
	logins   int
	attempts int
	helos    []string
	drops    int
}

// Start runs a stand-in on two free loopback ports.
func Start(opts Options) (*Server, error) {
	if opts.Username == "" {
		opts.Username = "demo@icloud.com"
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.MaxSize == 0 {
		opts.MaxSize = 20 << 20
	}
	ca, err := certs.NewCA("icloud-relay test CA")
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", CA: ca, opts: opts, gates: map[int]*gate{}}
	issue := ca.Issue
	if opts.RSA {
		issue = ca.IssueRSA
	}
	if s.good, err = issue("localhost", "127.0.0.1"); err != nil {
		return nil, err
	}
	if s.wrongCN, err = ca.Issue("wrong.example.net"); err != nil {
		return nil, err
	}
	other, err := certs.NewCA("Intercepting Antivirus CA")
	if err != nil {
		return nil, err
	}
	if s.badCA, err = other.Issue("localhost", "127.0.0.1"); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{GetCertificate: s.certificate, MinVersion: tls.VersionTLS12}
	if opts.MaxTLSVersion != 0 {
		tlsCfg.MinVersion, tlsCfg.MaxVersion = tls.VersionTLS10, opts.MaxTLSVersion
	}

	s.smtp = smtp.NewServer(smtp.BackendFunc(s.newSession))
	s.smtp.Domain = "standin.icloud.test"
	s.smtp.TLSConfig = tlsCfg
	s.smtp.MaxMessageBytes = opts.MaxSize
	s.smtp.EnableSMTPUTF8 = !opts.NoSMTPUTF8
	s.smtp.ReadTimeout = time.Minute
	if opts.IdleTimeout > 0 {
		s.smtp.ReadTimeout = opts.IdleTimeout
	}
	s.smtp.WriteTimeout = time.Minute
	s.smtp.ErrorLog = nopLogger{}

	for _, implicit := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.Close()
			return nil, err
		}
		g := &gate{srv: s, ln: ln, addr: ln.Addr().String(), changed: make(chan struct{})}
		if implicit {
			g.tls = tlsCfg
		}
		port := ln.Addr().(*net.TCPAddr).Port
		s.gates[port] = g
		if implicit {
			s.TLSPort = port
		} else {
			s.StartTLSPort = port
		}
		go s.smtp.Serve(g)
	}
	return s, nil
}

// Username and Password are the account's credentials.
func (s *Server) Username() string { return s.opts.Username }

// Password is the account's (app-specific) password.
func (s *Server) Password() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Password
}

// SetPassword changes the account's password (as when the user makes a new
// app-specific password).
func (s *Server) SetPassword(password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Password = password
}

// WriteCA writes the CA certificate into dir and returns its path, for
// upstream.ca_file.
func (s *Server) WriteCA(dir string) (string, error) {
	p := filepath.Join(dir, "standin-ca.pem")
	return p, os.WriteFile(p, s.CA.PEM, 0o644)
}

// UpstreamTOML returns the [upstream] section of an icloud-relay config
// that points at the stand-in; password "" means the account's own, and
// caFile is what WriteCA returned. More upstream keys may follow it.
func (s *Server) UpstreamTOML(password, caFile string) string {
	if password == "" {
		password = s.Password()
	}
	return fmt.Sprintf("[upstream]\nhost = %q\nstarttls_port = %d\ntls_port = %d\nusername = %q\npassword = %q\nca_file = %q\n",
		s.Host, s.StartTLSPort, s.TLSPort, s.opts.Username, password, caFile)
}

// Close stops the stand-in.
func (s *Server) Close() error {
	return s.smtp.Close() // closes the gates too
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

func (s *Server) currentFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// SetPort changes what the listener on port does with new connections.
func (s *Server) SetPort(port int, st PortState) error {
	g, ok := s.gates[port]
	if !ok {
		return fmt.Errorf("upstreamtest: no listener on port %d", port)
	}
	return g.setState(st)
}

// Messages returns a copy of every message accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// WaitMessages waits until at least n messages arrived or timeout passed.
func (s *Server) WaitMessages(n int, timeout time.Duration) []Message {
	deadline := time.Now().Add(timeout)
	for {
		msgs := s.Messages()
		if len(msgs) >= n || time.Now().After(deadline) {
			return msgs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Logins counts successful logins; AuthAttempts counts every AUTH command.
func (s *Server) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// AuthAttempts counts AUTH exchanges, successful or not.
func (s *Server) AuthAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Drops counts messages kept but answered by hanging up.
func (s *Server) Drops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drops
}

// HeloNames lists the names clients gave in EHLO/HELO after TLS.
func (s *Server) HeloNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.helos...)
}

func (s *Server) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f := s.currentFaults()
	switch {
	case f.BadCert:
		return &s.badCA, nil
	case f.WrongName:
		return &s.wrongCN, nil
	}
	return &s.good, nil
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	port := c.Conn().LocalAddr().(*net.TCPAddr).Port
	if _, isTLS := c.TLSConnectionState(); isTLS {
		s.mu.Lock()
		s.helos = append(s.helos, c.Hostname())
		s.mu.Unlock()
	}
	return &session{srv: s, conn: c, port: port}, nil
}

type session struct {
	srv    *Server
	conn   *smtp.Conn
	port   int
	authed bool
	from   string
	to     []string
}

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		s := ss.srv
		f := s.currentFaults()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.attempts++
		switch {
		case f.Auth != nil:
			return f.Auth
		case f.AuthFail || user != s.opts.Username || pass != s.opts.Password:
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		s.logins++
		ss.authed = true
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errors.New("identities not supported")
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return saslserver.NewLoginServer(check), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	f := ss.srv.currentFaults()
	time.Sleep(f.Delay)
	if !ss.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if f.Mail != nil {
		return f.Mail
	}
	if !ss.srv.ownsAddress(from) {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "From address is not one of your addresses"}
	}
	if opts != nil && opts.Size > ss.srv.opts.MaxSize {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed limit"}
	}
	ss.from = from
	return nil
}

func (s *Server) ownsAddress(addr string) bool {
	if strings.EqualFold(addr, s.opts.Username) {
		return true
	}
	for _, a := range s.opts.Aliases {
		if strings.EqualFold(addr, a) {
			return true
		}
	}
	return false
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	f := ss.srv.currentFaults()
	time.Sleep(f.Delay)
	if e := f.Rcpt[to]; e != nil {
		return e
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	f := ss.srv.currentFaults()
	if f.CloseMidData {
		io.CopyN(io.Discard, r, 64)
		ss.conn.Close()
		return errors.New("stand-in: hung up mid-DATA (fault)")
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	time.Sleep(f.Delay)
	if f.Data != nil {
		return f.Data
	}
	roll := rand.Float64()
	if roll < f.TempFailRate {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "stand-in: temporary failure (chaos)"}
	}
	drop := f.DropAfterData || roll < f.TempFailRate+f.DropRate
	ss.srv.mu.Lock()
	ss.srv.messages = append(ss.srv.messages, Message{From: ss.from, To: ss.to, Data: buf.Bytes(), Port: ss.port})
	if drop {
		ss.srv.drops++
	}
	ss.srv.mu.Unlock()
	if drop {
		ss.conn.Close()
	}
	return nil
}

func (ss *session) Reset() { ss.from, ss.to = "", nil }

func (ss *session) Logout() error { return nil }

// gate is a listener whose port can be refused or blackholed at will, and
// which can answer the greeting with a fault.
type gate struct {
	srv  *Server
	addr string
	tls  *tls.Config // implicit TLS when set

	mu      sync.Mutex
	ln      net.Listener
	state   PortState
	closed  bool
	changed chan struct{}
	held    []net.Conn
}

func (g *gate) setState(st PortState) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st == g.state {
		return nil
	}
	if g.state == PortRefused {
		ln, err := net.Listen("tcp", g.addr)
		if err != nil {
			return fmt.Errorf("upstreamtest: reopen %s: %w", g.addr, err)
		}
		g.ln = ln
	}
	if st == PortRefused {
		g.ln.Close()
	}
	if st == PortUp {
		for _, c := range g.held {
			c.Close()
		}
		g.held = nil
	}
	g.state = st
	close(g.changed)
	g.changed = make(chan struct{})
	return nil
}

func (g *gate) Accept() (net.Conn, error) {
	for {
		g.mu.Lock()
		ln, st, closed, changed := g.ln, g.state, g.closed, g.changed
		g.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if st == PortRefused {
			<-changed
			continue
		}
		c, err := ln.Accept()
		if err != nil {
			g.mu.Lock()
			reopened := g.ln != ln || g.state == PortRefused
			g.mu.Unlock()
			if reopened && !closed {
				continue
			}
			return nil, err
		}
		g.mu.Lock()
		st = g.state
		if st == PortBlackhole {
			g.held = append(g.held, c)
		}
		g.mu.Unlock()
		if st == PortBlackhole {
			continue
		}
		if d := g.srv.opts.Latency; d > 0 {
			c = newSlowConn(c, d)
		}
		if g.tls != nil {
			c = tls.Server(c, g.tls)
		}
		if f := g.srv.currentFaults(); f.Greeting != nil {
			go refuse(c, f.Greeting)
			continue
		}
		return c, nil
	}
}

func refuse(c net.Conn, e *smtp.SMTPError) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
}

func (g *gate) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	for _, c := range g.held {
		c.Close()
	}
	close(g.changed)
	g.changed = make(chan struct{})
	return g.ln.Close()
}

func (g *gate) Addr() net.Addr { return g.ln.Addr() }

type nopLogger struct{}

func (nopLogger) Printf(string, ...interface{}) {}
func (nopLogger) Println(...interface{})        {}

// StripTrace returns data without the one Received header icloud-relay puts
// first (a documented addition), so the rest can be compared byte for byte.
func StripTrace(data []byte) string {
	s := string(data)
	if !strings.HasPrefix(s, "Received: from ") {
		return s
	}
	end := strings.Index(s, "\r\n")
	for end >= 0 && end+2 < len(s) && (s[end+2] == ' ' || s[end+2] == '\t') {
		next := strings.Index(s[end+2:], "\r\n")
		if next < 0 {
			break
		}
		end += 2 + next
	}
	if end < 0 || !strings.Contains(s[:end], "(icloud-relay)") {
		return s
	}
	return s[end+2:]
}

// Subject returns the message's Subject header value.
func (m Message) Subject() string {
	for _, line := range strings.Split(string(m.Data), "\r\n") {
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "subject") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
