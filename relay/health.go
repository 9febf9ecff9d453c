package relay

import (
	"time"

	"github.com/icloud-relay/icloud-relay/upstream"
)

// Health is the scheduler's answer to "can mail flow?", for the status
// page, the status command and the metrics. Times are zero when unknown.
type Health struct {
	// Hold is what holds every delivery now ("" when nothing does:
	// unreachable, pause_account, throttled or hold_daily_limit), until
	// HoldUntil (zero while unreachable: until a probe sees the server).
	Hold      upstream.Class
	HoldUntil time.Time
	// Failing is when attempts began to fail for a reason that is not the
	// message's own (anything but a permanent refusal), with no delivery
	// since; zero while mail flows.
	Failing time.Time
	// LastError is the last failed attempt's cause, at LastErrorAt.
	LastError    *upstream.Error
	LastErrorAt  time.Time
	LastDelivery time.Time
	NextTry      time.Time // the earliest next attempt of a waiting message
	Queued       int       // messages the scheduler holds
	// The rolling day's sending against delivery.daily_limit.
	SentToday, RecipientsToday, DailyLimit int
	Counts                                 Counts
}

// Counts are totals since the relay started.
type Counts struct {
	Accepted  uint64 // messages handed to delivery by a door
	Delivered uint64 // messages every recipient has
	Attempts  uint64 // delivery attempts (one message each)
	// Failed counts messages moved to the failed area, by the stage and
	// class of their failure.
	Failed map[FailKey]uint64
}

// FailKey names a kind of failure.
type FailKey struct {
	Stage upstream.Stage
	Class upstream.Class
}

// Health returns the scheduler's state now.
func (s *Scheduler) Health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	h := Health{Failing: s.failing, LastError: s.lastErr, LastErrorAt: s.lastErrAt, LastDelivery: s.lastDelivery,
		Queued: len(s.items), DailyLimit: s.pol.DailyLimit}
	switch {
	case s.down != nil:
		h.Hold = upstream.Unreachable
	case now.Before(s.pausedUntil):
		h.Hold, h.HoldUntil = s.pausedFor, s.pausedUntil
	}
	for _, it := range s.items {
		if !it.busy && (h.NextTry.IsZero() || it.msg.NextAttempt.Before(h.NextTry)) {
			h.NextTry = it.msg.NextAttempt
		}
	}
	h.SentToday, h.RecipientsToday = s.sent.totals(now)
	h.Counts = s.counts
	h.Counts.Failed = make(map[FailKey]uint64, len(s.counts.Failed))
	for k, v := range s.counts.Failed {
		h.Counts.Failed[k] = v
	}
	return h
}

// attempted records the end of an attempt that did not deliver (e nil:
// it delivered).
func (s *Scheduler) attempted(e *upstream.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if e == nil {
		s.failing, s.lastDelivery = time.Time{}, now
		return
	}
	s.lastErr, s.lastErrAt = e, now
	if e.Class != upstream.Permanent && s.failing.IsZero() {
		s.failing = now
	}
}

// counted adds to the totals under the lock.
func (s *Scheduler) counted(f func(c *Counts)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts.Failed == nil {
		s.counts.Failed = map[FailKey]uint64{}
	}
	f(&s.counts)
}

// failedOne counts a message moved to the failed area because of e.
func (s *Scheduler) failedOne(e *upstream.Error) {
	k := FailKey{Stage: upstream.StageData, Class: upstream.Permanent}
	if e != nil {
		k = FailKey{Stage: e.Stage, Class: e.Class}
	}
	s.counted(func(c *Counts) { c.Failed[k]++ })
}
