package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/logging"
)

// The connection guard. Every local client may be hostile or broken, so
// every rule about how long and how much a client may send is enforced
// here, on the connection itself. go-smtp's own line limit and read
// deadline are off: they cannot tell a command from a message body (its
// deadline counted from the DATA command, and a line limit during DATA
// turned a long HTML line into a failed transfer).
//
// A connection is in one of three phases:
//
//   - command: between messages. From connecting, or from the end of its
//     last message, a client has one timeout to get to its next DATA or
//     BDAT; NOOP, RSET, HELP and the like do not extend it, so a loop of
//     them cannot hold a connection slot. A command line is at most
//     maxCommandLine bytes (what the client sends before the relay next
//     replies).
//   - data: while the session reads a message. Each read waits at most
//     one timeout (idle time, never counted from the DATA command), and
//     the whole transfer may take one timeout plus the time its bytes take
//     at minDataRate, so a trickle cannot last for ever either.
//   - ended: after any failure inside a transfer nothing more is read
//     from the client: not one byte of a body can be taken for a command.
//     The replies go out, then the connection closes, draining for a
//     moment what the client still sends so that it sees the reply.
const (
	maxCommandLine = 8 << 10
	minDataRate    = 4 << 10 // bytes a second: slower than any local link
	maxSession     = time.Hour
	lingerTime     = 2 * time.Second
	lingerBytes    = 64 << 20
)

// clientConn is one local client's connection: it carries the guard above,
// counts the connection against the caps, and holds the relay's replies
// until it next reads (or closes): go-smtp writes a reply a line at a time
// (eleven writes for EHLO), which costs a system call and a wake-up of the
// client per line. A request-response server always reads or closes after
// replying, so nothing waits long.
type clientConn struct {
	net.Conn
	srv      *Server
	client   netip.Prefix // what the per-client cap counts
	accepted time.Time
	closed   atomic.Bool

	mu         sync.Mutex // guards what follows
	out        []byte     // replies not yet sent
	progress   time.Time  // command phase: since when the client is between messages
	sinceWrite int        // bytes read since the relay last wrote
	inData     bool
	dataStart  time.Time
	dataBytes  int64
	ended      bool
}

// maxHeldReply bounds what clientConn holds back; more is sent at once.
const maxHeldReply = 16 << 10

// guardOf finds the clientConn under a session's connection (go-smtp puts
// a tls.Conn on top of it after STARTTLS and on the implicit-TLS
// listener); nil when there is none, as in tests that build sessions
// directly.
func guardOf(c net.Conn) *clientConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	cc, _ := c.(*clientConn)
	return cc
}

func (c *clientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sinceWrite = 0
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

// SetReadDeadline is the guard's alone: it sets one before every read.
func (c *clientConn) SetReadDeadline(time.Time) error { return nil }

func (c *clientConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *clientConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return 0, io.EOF
	}
	deadline, inData := c.deadlineLocked(time.Now()), c.inData
	c.mu.Unlock()
	c.Conn.SetReadDeadline(deadline)
	n, err := c.Conn.Read(b)

	var ne net.Error
	timedOut := errors.As(err, &ne) && ne.Timeout()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case inData && timedOut:
		// go-smtp passes this reply on as it is (for BDAT too); the
		// session logs it.
		c.ended = true
		return n, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
			Message: fmt.Sprintf("Timeout: nothing received for %s in the middle of the message; closing", c.srv.cfg.Timeout)}
	case inData:
		c.dataBytes += int64(n)
	case timedOut:
		c.srv.refusals.timedOut.event(func(ev *zerolog.Event) {
			ev.Str(logging.KeyClient, c.RemoteAddr().String()).Int64("timeout_ms", c.srv.cfg.Timeout.Milliseconds())
		})
	default:
		if c.sinceWrite += n; c.sinceWrite > maxCommandLine {
			c.ended = true
			return 0, smtp.ErrTooLongLine
		}
	}
	return n, err
}

// deadlineLocked is when the read about to start must have data by.
func (c *clientConn) deadlineLocked(now time.Time) time.Time {
	timeout := c.srv.cfg.Timeout
	if !c.inData {
		return c.progress.Add(timeout)
	}
	idle := now.Add(timeout)
	whole := c.dataStart.Add(timeout + time.Duration(float64(c.dataBytes)/minDataRate*float64(time.Second)))
	if whole.Before(idle) {
		return whole
	}
	return idle
}

// beginData enters the data phase: the session starts reading a message.
func (c *clientConn) beginData() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData, c.dataStart, c.dataBytes = true, time.Now(), 0
}

// endData leaves the data phase. After a failed transfer, or once the
// connection has lasted maxSession, the connection ends.
func (c *clientConn) endData(failed bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.inData, c.progress = false, now
	if failed || now.Sub(c.accepted) > maxSession {
		c.ended = true
	}
}

// isEnded reports whether the connection takes no more commands.
func (c *clientConn) isEnded() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended
}

func (c *clientConn) Close() error {
	c.flush() // the last reply (221, 421, the refusal of a transfer) still goes out
	if !c.closed.CompareAndSwap(false, true) {
		return c.Conn.Close()
	}
	c.srv.release(c.client)
	c.mu.Lock()
	linger := c.ended
	c.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok && linger {
		// Closing with unread data would reset the connection, and the
		// client could lose the reply: say we are done, then drain.
		cw.CloseWrite()
		c.Conn.SetReadDeadline(time.Now().Add(lingerTime))
		io.CopyN(io.Discard, c.Conn, lingerBytes)
	}
	return c.Conn.Close()
}

// accessListener turns away clients outside the allowed networks before
// they see a greeting, so the relay cannot be used as an open relay, and
// enforces the connection caps: in all, and per client address (an IPv6
// client counts by its /64, which one host can fill with addresses).
type accessListener struct {
	net.Listener
	srv *Server
}

func (l *accessListener) Accept() (net.Conn, error) {
	s := l.srv
	delay := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// Out of file descriptors and the like pass; wait and go on,
			// as net/http does, instead of giving up the listener.
			var ne net.Error
			if errors.As(err, &ne) && ne.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.refusals.acceptFailed.event(func(ev *zerolog.Event) { ev.Err(err) })
				time.Sleep(delay)
				continue
			}
			return nil, err
		}
		delay = 0
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		addr := ap.Addr().Unmap()
		if !allowed(s.cfg.Allow, addr) {
			s.refusals.notAllowed.event(func(ev *zerolog.Event) { ev.Str(logging.KeyClient, c.RemoteAddr().String()) })
			go refuse(c, "554 5.7.1 Your address is not allowed to use this relay")
			continue
		}
		client := clientKey(addr)
		switch s.admit(client) {
		case tooManyInAll:
			s.refusals.tooMany.event(func(ev *zerolog.Event) {
				ev.Str(logging.KeyClient, c.RemoteAddr().String()).Int("max_connections", s.cfg.MaxConnections)
			})
			go refuse(c, "421 4.7.0 Too many connections to this relay; try again shortly")
			continue
		case tooManyFromClient:
			s.refusals.tooManyFromClient.event(func(ev *zerolog.Event) {
				ev.Str(logging.KeyClient, c.RemoteAddr().String()).Int("max_connections_per_client", s.cfg.MaxConnectionsPerClient)
			})
			go refuse(c, "421 4.7.0 Too many connections from your address; try again shortly")
			continue
		}
		now := time.Now()
		return &clientConn{Conn: c, srv: s, client: client, accepted: now, progress: now}, nil
	}
}

// clientKey is what the per-client limits count: an IPv4 address, or an
// IPv6 address's /64.
func clientKey(a netip.Addr) netip.Prefix {
	bits := a.BitLen()
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

type admission int

const (
	admitted admission = iota
	tooManyInAll
	tooManyFromClient
)

// admit counts a new connection from client, or says why it may not have one.
func (s *Server) admit(client netip.Prefix) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.MaxConnections > 0 && s.connCount >= s.cfg.MaxConnections {
		return tooManyInAll
	}
	if s.cfg.MaxConnectionsPerClient > 0 && s.perClient[client] >= s.cfg.MaxConnectionsPerClient {
		return tooManyFromClient
	}
	s.connCount++
	s.perClient[client]++
	return admitted
}

func (s *Server) release(client netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connCount--
	if s.perClient[client]--; s.perClient[client] <= 0 {
		delete(s.perClient, client)
	}
}

// isLocal reports this machine's own address, the one its programs
// connect from: 127.0.0.1 or ::1. Other loopback addresses are treated as
// any other client (listen.allow, logins only over TLS).
func isLocal(a netip.Addr) bool {
	a = a.Unmap()
	return a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv6Loopback()
}

func refuse(c net.Conn, reply string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, reply+"\r\n")
	c.Close()
}

// allowed reports whether a may use the relay: it is in the allowed
// networks, or it is this machine's own address (127.0.0.1, ::1 stay
// allowed whatever listen.allow says, so local tools such as sendmail keep
// working).
func allowed(nets []netip.Prefix, a netip.Addr) bool {
	if isLocal(a) {
		return true
	}
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
