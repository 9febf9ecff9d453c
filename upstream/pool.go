package upstream

import (
	"context"
	"sync"
	"time"
)

// pool keeps logged-in sessions for reuse, so that a burst of messages costs
// one TLS handshake and one login per connection, not per message: faster,
// and no "454 Too many login attempts" from iCloud.
type pool struct {
	mu   sync.Mutex
	idle []*session
	// logins counts fresh logins and connections the connections opened,
	// for the metrics, tests and the benchmark.
	logins, connections int
	// warming counts spares being logged in (warm); warmed is closed and
	// replaced whenever one is done.
	warming int
	warmed  chan struct{}
}

// Stats are the client's connection counts.
type Stats struct {
	Connections int // opened since the client was made
	Logins      int // fresh logins since the client was made
	Idle        int // logged-in connections kept for the next message now
}

// Stats returns the client's connection counts.
func (c *Client) Stats() Stats {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	return Stats{Connections: c.pool.connections, Logins: c.pool.logins, Idle: len(c.pool.idle)}
}

// Logins returns how many times the client has logged in.
func (c *Client) Logins() int {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	return c.pool.logins
}

// take returns an idle session, rebound to ctx, or nil: the one that has
// carried the most messages, so that a spare (warm) waits for its turn
// instead of retiring as early as the session it replaces.
func (c *Client) take(ctx context.Context) *session {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	for len(c.pool.idle) > 0 {
		i := 0
		for j, x := range c.pool.idle {
			if x.sent > c.pool.idle[i].sent {
				i = j
			}
		}
		s := c.pool.idle[i]
		c.pool.idle = append(c.pool.idle[:i], c.pool.idle[i+1:]...)
		if !s.idleTimer.Stop() {
			continue // its idle time ran out: it is being closed
		}
		s.stop()
		raw := s.raw
		s.stop = context.AfterFunc(ctx, func() { raw.Close() })
		return s
	}
	return nil
}

// put keeps s for reuse, or closes it when the pool is full, reuse is off,
// or s has carried its share of messages.
func (c *Client) put(s *session) {
	if c.cfg.IdleTimeout <= 0 || (c.cfg.MaxMessagesPerConnection > 0 && s.sent >= c.cfg.MaxMessagesPerConnection) {
		s.healthy = true
		s.close()
		return
	}
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	if len(c.pool.idle) >= max(c.cfg.MaxIdle, 1) {
		go func() { s.healthy = true; s.close() }()
		return
	}
	s.idleTimer = time.AfterFunc(c.cfg.IdleTimeout, func() {
		c.pool.mu.Lock()
		for i, x := range c.pool.idle {
			if x == s {
				c.pool.idle = append(c.pool.idle[:i], c.pool.idle[i+1:]...)
				break
			}
		}
		c.pool.mu.Unlock()
		s.healthy = true
		s.close()
	})
	c.pool.idle = append(c.pool.idle, s)
}

// spareAhead is how many messages before its limit a session gets a spare
// logged in beside it (about one batch): the message after its last then
// finds a logged-in session instead of waiting for a fresh login, about six
// round trips to iCloud, which made the tail of the latency.
func spareAhead(limit int) int { return min(8, max(limit/4, 1)) }

// warm logs in a spare session in the background and pools it. A failure is
// left to the next message, which logs in itself and says why it cannot.
func (c *Client) warm() {
	c.pool.mu.Lock()
	c.pool.warming++
	c.pool.mu.Unlock()
	defer func() {
		c.pool.mu.Lock()
		c.pool.warming--
		if c.pool.warmed != nil {
			close(c.pool.warmed)
			c.pool.warmed = nil
		}
		c.pool.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.ConnectTimeout+4*c.cfg.Timeout)
	defer cancel()
	s, err := c.connect(ctx, true)
	if err != nil {
		return
	}
	s.stop() // unbound from ctx before it ends
	c.put(s)
}

// warmingDone returns a channel closed when a spare being logged in is
// done, or nil when none is.
func (c *Client) warmingDone() <-chan struct{} {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	if c.pool.warming == 0 {
		return nil
	}
	if c.pool.warmed == nil {
		c.pool.warmed = make(chan struct{})
	}
	return c.pool.warmed
}

// CloseIdle ends every idle session politely.
func (c *Client) CloseIdle() {
	c.pool.mu.Lock()
	idle := c.pool.idle
	c.pool.idle = nil
	c.pool.mu.Unlock()
	for _, s := range idle {
		if s.idleTimer.Stop() {
			s.healthy = true
			s.close()
		}
	}
}
