package relay

import (
	"errors"
	"time"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// ErrBusy means the message is being delivered at this moment.
var ErrBusy = errors.New("the message is being delivered right now; try again in a moment")

// Retry makes a queued message due now. A retry asked for by the user also
// lifts a pause or an "unreachable" state: the attempt will tell.
func (s *Scheduler) Retry(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[id]
	if !ok {
		return &queue.Error{Op: "retry", ID: id, Err: queue.ErrNotFound}
	}
	if !it.busy {
		it.msg.NextAttempt = s.clock.Now()
	}
	s.resumeLocked()
	return nil
}

// RetryAll makes every queued message due now and returns how many there are.
func (s *Scheduler) RetryAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	for _, it := range s.items {
		if !it.busy {
			it.msg.NextAttempt = now
		}
	}
	s.resumeLocked()
	return len(s.items)
}

// Hold says what holds every delivery now, if anything: the class of the
// failure that did (unreachable, pause_account, throttled or
// hold_daily_limit) and until when (zero while unreachable: until a probe
// sees the server again).
func (s *Scheduler) Hold() (upstream.Class, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.down != nil:
		return upstream.Unreachable, time.Time{}
	case s.clock.Now().Before(s.pausedUntil):
		return s.pausedFor, s.pausedUntil
	}
	return "", time.Time{}
}

func (s *Scheduler) resumeLocked() {
	s.down, s.pausedUntil = nil, time.Time{}
	s.changedLocked()
}

// Delete removes a message from the queue (or the failed area) for good.
func (s *Scheduler) Delete(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[id]
	if !ok {
		return s.q.RemoveFailed(id)
	}
	if it.busy || it.staged != nil {
		return &queue.Error{Op: "delete", ID: id, Err: ErrBusy}
	}
	if err := s.q.Remove(id); err != nil {
		return err
	}
	delete(s.items, id)
	return nil
}

// Requeue moves a failed message back into the queue, due now.
func (s *Scheduler) Requeue(id string) error {
	m, err := s.q.Requeue(id)
	if err != nil {
		return err
	}
	s.Submit(m, nil)
	return nil
}
