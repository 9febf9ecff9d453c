package upstream

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"time"
)

// Session is an open, logged-in upstream connection, for step-by-step
// checks (doctor). Deliveries use Client.Send.
type Session struct{ s *session }

// Open connects, secures and logs in, trying the ports as Send does.
func (c *Client) Open(ctx context.Context) (*Session, error) {
	s, err := c.connect(ctx, true)
	if err != nil {
		return nil, err
	}
	return &Session{s: s}, nil
}

// Port is the port the session is on.
func (s *Session) Port() int { return s.s.port }

// TLS describes the session's TLS connection.
func (s *Session) TLS() tls.ConnectionState { return s.s.tls.ConnectionState() }

// Extension reports an EHLO extension and its parameters.
func (s *Session) Extension(name string) (bool, string) { return s.s.client.Extension(name) }

// CheckSender asks the server whether it accepts from as sender (MAIL FROM),
// then resets: nothing is sent.
func (s *Session) CheckSender(from string) error {
	if err := s.s.cmd(250, "MAIL FROM:<%s>", from); err != nil {
		return Classify(StageMail, s.s.port, eofMeansClosed(err))
	}
	if err := s.s.cmd(250, "RSET"); err != nil {
		return Classify(StageMail, s.s.port, eofMeansClosed(err))
	}
	return nil
}

// Send delivers m on this session.
func (s *Session) Send(m *Message) (*Result, error) {
	res, err := s.s.send(m)
	s.s.healthy = err == nil
	return res, err
}

// Close ends the session.
func (s *Session) Close() {
	s.s.healthy = true
	s.s.close()
}

// Lookup resolves the host (stage dns); an IP address needs no lookup.
func (c *Client) Lookup(ctx context.Context) ([]string, error) {
	if ip := net.ParseIP(c.cfg.Host); ip != nil {
		return []string{ip.String()}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	r := c.cfg.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupHost(ctx, c.cfg.Host)
	if err != nil {
		return nil, Classify(StageDNS, 0, err)
	}
	return addrs, nil
}

// DialPort opens and closes a TCP connection to port (stage connect),
// returning how long it took.
func (c *Client) DialPort(ctx context.Context, port int) (time.Duration, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, Resolver: c.cfg.Resolver}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(c.cfg.Host, strconv.Itoa(port)))
	if err != nil {
		return time.Since(start), Classify(StageConnect, port, err)
	}
	took := time.Since(start)
	conn.Close()
	return took, nil
}

// Ports returns the STARTTLS port and the implicit-TLS port.
func (c *Client) Ports() (starttls, implicit int) { return c.cfg.StartTLSPort, c.cfg.TLSPort }

// CertSummary names a TLS connection's certificate and its issuer.
func CertSummary(st tls.ConnectionState) string {
	if len(st.PeerCertificates) == 0 {
		return "no certificate"
	}
	return strings.TrimSpace(tls.VersionName(st.Version) + ", " + certSummary(st.PeerCertificates[0]))
}
