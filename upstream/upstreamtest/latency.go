package upstreamtest

import (
	"net"
	"sync"
	"time"
)

// slowConn delivers what the stand-in writes one Latency later, without
// holding the stand-in up: every reply reaches the client a round trip late,
// as across a network, and replies to pipelined commands stay pipelined.
type slowConn struct {
	net.Conn
	delay time.Duration

	mu     sync.Mutex
	closed bool
	q      chan delayed
	done   chan struct{}
}

type delayed struct {
	due time.Time
	b   []byte
}

func newSlowConn(c net.Conn, d time.Duration) *slowConn {
	s := &slowConn{Conn: c, delay: d, q: make(chan delayed, 4096), done: make(chan struct{})}
	go s.deliver()
	return s
}

func (s *slowConn) deliver() {
	defer close(s.done)
	for d := range s.q {
		time.Sleep(time.Until(d.due))
		if _, err := s.Conn.Write(d.b); err != nil {
			s.Conn.Close()
		}
	}
}

func (s *slowConn) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	s.q <- delayed{due: time.Now().Add(s.delay), b: append([]byte(nil), b...)}
	return len(b), nil
}

// Close sends what is still on its way, then closes.
func (s *slowConn) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.q)
	}
	s.mu.Unlock()
	<-s.done
	return s.Conn.Close()
}

// Write deadlines do not reach the socket: what was written is already on
// its way (crypto/tls sets an expired one when it closes, after its last
// alert, which would cut off the replies still in flight).
func (s *slowConn) SetWriteDeadline(time.Time) error { return nil }

func (s *slowConn) SetDeadline(t time.Time) error { return s.Conn.SetReadDeadline(t) }
