package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// Sender is the upstream as delivery sees it; upstream.Client is one.
type Sender interface {
	// SendBatch delivers messages back to back, one outcome each.
	SendBatch(ctx context.Context, msgs []*upstream.Message) []upstream.Delivery
	Probe(ctx context.Context) error
}

// A worker takes up to maxBatch due messages at once, while they come to
// at most batchBytes: over a pipelining connection each costs one round
// trip instead of two. Big messages gain nothing from it and go alone.
const (
	maxBatch   = 8
	batchBytes = 1 << 20
)

// Outcome is what a waiting client is told about the first attempt.
type Outcome struct {
	Delivered bool            // every recipient has the message
	Refusal   *upstream.Error // a permanent refusal: nobody got the message
	// Refused lists the recipients refused for good when the others got the
	// message (the attempt is over; a 250 must say who did not get it).
	Refused []RecipientRefusal
}

// RecipientRefusal is one recipient's permanent refusal.
type RecipientRefusal struct {
	Addr  string
	Error *upstream.Error
}

// Scheduler owns the queued messages in memory and delivers them with a
// pool of workers. Each message has one owner at a time: the door that
// staged it (item.staged, until Settle), else the scheduler, and while
// one worker sends it that worker (item.busy), so no message is sent twice
// concurrently.
//
// Two states are about the upstream, not a message: paused (the account's
// login was refused: retrying every message would only repeat it and risk a
// lock-out) and unreachable (nothing answers: messages wait without burning
// their retries while a cheap probe watches for the upstream's return, and
// then everything is sent at once).
type Scheduler struct {
	q     *queue.Queue
	up    Sender
	pol   Policy
	clock Clock
	log   zerolog.Logger

	mu          sync.Mutex
	items       map[string]*item
	notify      chan struct{} // closed and replaced on every change
	down        *upstream.Error
	wentDown    chan struct{} // signalled when the upstream becomes unreachable
	pausedUntil time.Time
	pausedFor   upstream.Class // what set pausedUntil
	sent        sendCounter
	wg          sync.WaitGroup

	// For Health (health.go).
	failing, lastErrAt, lastDelivery time.Time
	lastErr                          *upstream.Error
	counts                           Counts
	// roundTrip is a moving average of the upstream's round trip
	// (upstream.Delivery.RoundTrip; bulk.go asks whether it is near).
	roundTrip time.Duration
}

type item struct {
	msg     *queue.Message
	busy    bool
	waiters []chan Outcome

	// A staged message (queue.Stage) belongs to the door that staged it
	// until the door settles it (Settle): a worker may send it meanwhile,
	// reading its data, but never commits, discards or files it. An attempt
	// that ends first is parked for the door, which files it after it has
	// committed or discarded the data. See ARCHITECTURE.md.
	staged    *queue.Staged
	snapshot  *queue.Message // what the door commits: as received, never tried
	tried     chan struct{}  // closed when an attempt is parked
	parked    *parked
	withdrawn bool // the door could not store it: an attempt's result is dropped

	removed bool // the upstream took it all and its files are gone
}

// parked is an attempt that ended while the door still owned its message.
type parked struct {
	whole bool   // the upstream took the message for every recipient
	file  func() // files the result, as the worker would have
}

// NewScheduler returns a scheduler for q; call Start to run it.
func NewScheduler(q *queue.Queue, up Sender, pol Policy, log zerolog.Logger) *Scheduler {
	clock := pol.Clock
	if clock == nil {
		clock = systemClock{}
	}
	return &Scheduler{q: q, up: up, pol: pol, clock: clock, log: log, items: map[string]*item{}, notify: make(chan struct{}), wentDown: make(chan struct{}, 1)}
}

// Start loads the queue and runs the workers until ctx ends. Messages found
// in the queue are due at once: a restart is a good moment to retry.
func (s *Scheduler) Start(ctx context.Context) error {
	msgs, err := s.q.Active()
	if err != nil {
		return err
	}
	s.loadCounter()
	now := s.clock.Now()
	s.mu.Lock()
	for _, m := range msgs {
		m.NextAttempt = now
		s.items[m.ID] = &item{msg: m}
	}
	s.mu.Unlock()
	if len(msgs) > 0 {
		s.log.Info().Int(logging.KeyQueued, len(msgs)).Msg("picked up queued messages")
	}
	for i := 0; i < s.pol.Workers; i++ {
		s.wg.Add(1)
		go s.worker(ctx)
	}
	s.wg.Add(1)
	go s.prober(ctx)
	return nil
}

// Wait blocks until the workers have stopped (after ctx ends), then saves
// the sending counter.
func (s *Scheduler) Wait() {
	s.wg.Wait()
	s.saveCounter()
}

// Len returns the number of messages waiting for delivery.
func (s *Scheduler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

// Submit hands a message to delivery. A committed message (st nil) is the
// scheduler's from now on. A staged one stays its door's until the door
// calls Settle; when the upstream is usable a worker tries it meanwhile,
// and Submit returns a channel closed when that attempt has ended (nil
// when no attempt is due).
func (s *Scheduler) Submit(m *queue.Message, st *queue.Staged) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	it := &item{msg: m}
	s.counts.Accepted++
	if st != nil {
		it.staged, it.snapshot, it.tried = st, m.Clone(), make(chan struct{})
	}
	s.items[m.ID] = it
	s.changedLocked()
	if st != nil && s.usable(s.clock.Now()) {
		return it.tried
	}
	return nil
}

// Settle ends a door's ownership of the staged message id: the data is
// discarded when an attempt has already delivered it to every recipient,
// otherwise committed and the message handed to delivery. It returns the
// outcome of the attempt that ended first (zero when none has ended: the
// message is queued and the attempt, if any, goes on). An error means the
// message could not be stored and is not queued: its client must send it
// again.
func (s *Scheduler) Settle(id string) (Outcome, error) {
	s.mu.Lock()
	it := s.items[id]
	if it == nil || it.staged == nil {
		s.mu.Unlock()
		return Outcome{}, fmt.Errorf("settle %s: not a message staged with this scheduler", id)
	}
	st, p := it.staged, it.parked
	s.mu.Unlock()
	if p != nil && p.whole {
		if err := s.q.Discard(st); err != nil {
			s.log.Warn().Err(err).Str(logging.KeyQueueID, id).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("delivered, but its staged data could not be removed")
		}
		it.removed = true
	} else if err := s.q.Commit(st, it.snapshot); err != nil {
		s.mu.Lock()
		it.staged, it.withdrawn = nil, true
		if !it.busy || it.parked != nil {
			delete(s.items, id) // no attempt runs: nothing else knows of it
		}
		s.changedLocked()
		s.mu.Unlock()
		return Outcome{}, err
	}
	s.mu.Lock()
	it.staged = nil // delivery's from here on
	p = it.parked   // again: the attempt may have ended during the commit
	it.parked = nil
	var ch chan Outcome
	if p != nil {
		ch = make(chan Outcome, 1)
		it.waiters = append(it.waiters, ch)
	}
	s.mu.Unlock()
	if p == nil {
		return Outcome{}, nil
	}
	p.file()
	return <-ch, nil
}

// finish files the result of an attempt at it (file), or parks it while
// the door still owns the message. whole says the upstream took it for
// every recipient.
func (s *Scheduler) finish(it *item, log zerolog.Logger, whole bool, file func()) {
	s.mu.Lock()
	switch {
	case it.withdrawn:
		delete(s.items, it.msg.ID)
		s.changedLocked()
		s.mu.Unlock()
		if whole {
			log.Warn().Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("delivered, but its client was told to send it again (it could not be stored): the recipients may get it twice")
		}
		return
	case it.staged != nil:
		it.parked = &parked{whole: whole, file: file}
		close(it.tried)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	file()
}

func (s *Scheduler) usable(now time.Time) bool {
	return s.down == nil && !now.Before(s.pausedUntil)
}

func (s *Scheduler) changedLocked() {
	close(s.notify)
	s.notify = make(chan struct{})
}

func (s *Scheduler) worker(ctx context.Context) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		now := s.clock.Now()
		it, wait := s.pick(now)
		var batch []*item
		if it != nil {
			batch = s.pickMore(it, now)
		}
		notify := s.notify
		s.mu.Unlock()
		if batch != nil {
			s.deliver(ctx, batch)
			continue
		}
		t := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-notify:
		case <-t.C():
		}
		t.Stop()
	}
}

// pick claims the next message to work on, or says how long to wait.
// Expired messages are claimed even while the upstream is unusable, so that
// they reach the failed area on time.
func (s *Scheduler) pick(now time.Time) (*item, time.Duration) {
	wait := time.Minute
	usable := s.usable(now)
	if !usable && s.down == nil {
		wait = min(wait, s.pausedUntil.Sub(now))
	}
	var best *item
	for _, it := range s.items {
		if it.busy {
			continue
		}
		expires := it.msg.Received.Add(s.pol.MaxAge)
		if !now.Before(expires) {
			it.busy = true
			return it, 0
		}
		wait = min(wait, expires.Sub(now))
		if !usable {
			continue
		}
		if d := it.msg.NextAttempt.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if best == nil || (it.staged != nil && best.staged == nil) ||
			((it.staged != nil) == (best.staged != nil) && it.msg.NextAttempt.Before(best.msg.NextAttempt)) {
			best = it
		}
	}
	if best != nil {
		best.busy = true
	}
	return best, max(wait, time.Millisecond)
}

// pickMore claims, to go with first, more messages that are due now, those
// with a waiting client first, within the batch limits.
func (s *Scheduler) pickMore(first *item, now time.Time) []*item {
	batch := []*item{first}
	size := first.msg.Size
	if !s.usable(now) || size >= batchBytes || now.After(first.msg.Received.Add(s.pol.MaxAge)) {
		return batch
	}
	for _, waiting := range []bool{true, false} {
		for _, it := range s.items {
			if len(batch) == maxBatch {
				return batch
			}
			if it.busy || (it.staged != nil) != waiting || it.msg.NextAttempt.After(now) ||
				size+it.msg.Size > batchBytes || !now.Before(it.msg.Received.Add(s.pol.MaxAge)) {
				continue
			}
			it.busy = true
			size += it.msg.Size
			batch = append(batch, it)
		}
	}
	return batch
}

func (s *Scheduler) release(it *item, done bool, o Outcome) {
	s.mu.Lock()
	it.busy = false
	if done {
		delete(s.items, it.msg.ID)
	}
	for _, ch := range it.waiters {
		ch <- o
	}
	it.waiters = nil
	s.changedLocked()
	s.mu.Unlock()
}

// deliver makes one attempt at each message of the batch and files the
// results. A message the upstream took whole leaves the queue the moment
// its reply is read (upstream.Message.Done), before the next reply is read
// and before anything else is done about it (the log line, the counters),
// so a crash in the middle of a batch sends again only what the upstream
// had accepted and the relay had not yet read.
func (s *Scheduler) deliver(ctx context.Context, batch []*item) {
	now := s.clock.Now()
	var ready []*item
	var logs []zerolog.Logger
	var msgs []*upstream.Message
	var bodies []io.Closer
	for _, it := range batch {
		m := it.msg
		log := s.log.With().Str(logging.KeyQueueID, m.ID).Logger()
		if !now.Before(m.Received.Add(s.pol.MaxAge)) {
			s.finish(it, log, false, func() { s.expire(it, log) })
			continue
		}
		// Save a retry before any network I/O: a crash mid-delivery must
		// not make the message look less tried. A first attempt needs no
		// record (saving two fsyncs per message): after a crash every
		// queued message is tried again at start anyway.
		m.Attempts++
		s.counted(func(c *Counts) { c.Attempts++ })
		m.NextAttempt = now.Add(Backoff(m.Attempts, s.pol.RetryMin, s.pol.RetryMax, rand.Float64()))
		if err := s.saveRetry(m); err != nil {
			log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Int(logging.KeyAttempt, m.Attempts).
				Msg("cannot record delivery attempt; will retry")
			s.finish(it, log, false, func() { s.release(it, false, Outcome{}) })
			continue
		}
		body, err := s.body(it)
		if err != nil {
			s.finish(it, log, false, func() { s.failLocal(it, log, fmt.Sprintf("message data unreadable: %v", err)) })
			continue
		}
		ready, logs = append(ready, it), append(logs, log)
		bodies = append(bodies, body)
		msgs = append(msgs, &upstream.Message{From: m.From, To: m.Pending(), Size: m.Size, Body: body, UTF8: m.UTF8, EightBit: m.EightBit})
	}
	if len(ready) == 0 {
		return
	}
	for i, m := range msgs {
		m.Done = func(d upstream.Delivery) {
			if d.Err == nil && (d.Result == nil || len(d.Result.Refused) == 0) {
				bodies[i].Close() // first: Windows cannot remove an open file
				s.remove(ready[i], logs[i])
			}
		}
	}
	out := s.up.SendBatch(ctx, msgs)
	var roundTrip time.Duration // how far the upstream is (bulk.go)
	for i, d := range out {
		bodies[i].Close()
		roundTrip = max(roundTrip, d.RoundTrip)
		s.fileDelivery(ctx, ready[i], logs[i], d, now)
	}
	if roundTrip > 0 {
		s.measured(roundTrip)
	}
}

// body opens a message's data: a staged one's where its door staged it
// (perhaps in memory), a queued one's in the queue.
func (s *Scheduler) body(it *item) (io.ReadCloser, error) {
	s.mu.Lock()
	st := it.staged
	s.mu.Unlock()
	if st != nil {
		return st.Open()
	}
	return s.q.Body(it.msg.ID)
}

// remove takes a message the upstream has whole out of the queue: the one
// step that cannot wait. A message its door still owns is the door's to
// discard (Settle).
func (s *Scheduler) remove(it *item, log zerolog.Logger) {
	s.mu.Lock()
	door := it.staged != nil || it.withdrawn
	s.mu.Unlock()
	if door {
		return
	}
	if err := s.q.Delete(it.msg.ID); err != nil {
		log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("delivered, but could not remove the message from the queue; it may be sent again after a restart")
		return
	}
	it.removed = true
}

// fileDelivery files one message's outcome from a batch.
func (s *Scheduler) fileDelivery(ctx context.Context, it *item, log zerolog.Logger, d upstream.Delivery, started time.Time) {
	whole := d.Err == nil && (d.Result == nil || len(d.Result.Refused) == 0)
	interrupted := ctx.Err() != nil && d.Err != nil
	s.finish(it, log, whole, func() {
		if interrupted {
			// Cut short by shutdown: not a failure of the message.
			log.Info().Int(logging.KeyAttempt, it.msg.Attempts).Msg("delivery interrupted by shutdown; the message stays queued")
			s.release(it, false, Outcome{})
			return
		}
		var ue *upstream.Error
		if err := d.Err; err != nil && !errors.As(err, &ue) {
			ue = upstream.Classify(upstream.StageData, 0, err)
		}
		s.file(it, log, d.Result, ue, started)
	})
}

func (s *Scheduler) saveRetry(m *queue.Message) error {
	if m.Attempts == 1 {
		return nil
	}
	return s.q.Update(m)
}

// file applies one attempt's result to the message and its recipients.
func (s *Scheduler) file(it *item, log zerolog.Logger, res *upstream.Result, ue *upstream.Error, started time.Time) {
	ue, res = s.mask(ue), s.maskResult(res)
	m := it.msg
	now := s.clock.Now()
	port := 0
	if res != nil {
		port = res.Port
	}
	newlyDelivered := 0
	for i := range m.Rcpts {
		r := &m.Rcpts[i]
		if r.Status != queue.Pending {
			continue
		}
		var rerr *upstream.Error
		if res != nil {
			rerr = res.Refused[r.Addr]
		}
		switch {
		case rerr != nil:
			logging.RecipientRefused(s.log, m, r.Addr, rerr)
			r.Error = outcome(rerr, now)
			if rerr.Class == upstream.Permanent {
				r.Status = queue.Failed
			}
		case ue == nil:
			r.Status, r.Error = queue.Delivered, nil
			newlyDelivered++
		case ue.Stage == upstream.StageRcpt:
			// A network error during RCPT: this recipient is simply not done.
			r.Error = outcome(ue, now)
		default:
			r.Error = outcome(ue, now)
			// Only a permanent refusal is about this message: the other
			// classes hold it (see upstream.Class).
			if ue.Class == upstream.Permanent {
				r.Status = queue.Failed
			}
		}
	}
	if ue != nil {
		m.Record(*outcome(ue, now))
	} else {
		m.Record(queue.Outcome{Time: now, Port: port, Text: "delivered"})
	}

	delivered, failed := 0, 0
	var firstFail *upstream.Error
	for _, r := range m.Rcpts {
		switch r.Status {
		case queue.Delivered:
			delivered++
		case queue.Failed:
			failed++
			if firstFail == nil {
				firstFail = fromOutcome(r.Error)
			}
		}
	}
	pending := len(m.Rcpts) - delivered - failed
	took := now.Sub(started)

	if newlyDelivered > 0 {
		s.countSent(newlyDelivered)
	}
	if pending == 0 {
		if failed == 0 {
			if !it.removed {
				if err := s.q.Delete(m.ID); err != nil {
					log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("delivered, but could not remove the message from the queue; it may be sent again after a restart")
				}
			}
			logging.Delivered(s.log, m, port, took)
			s.attempted(nil)
			s.counted(func(c *Counts) { c.Delivered++ })
			s.release(it, true, Outcome{Delivered: true})
			return
		}
		final := *outcome(firstFail, now)
		if err := s.q.Fail(m, final); err != nil {
			log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("cannot move the message to the failed area")
		}
		s.reportFailure(m, log)
		logging.Failed(s.log, m, firstFail, delivered, failed)
		s.attempted(firstFail)
		s.failedOne(firstFail)
		o := Outcome{}
		if delivered == 0 {
			o.Refusal = firstFail
		} else {
			for _, r := range m.Rcpts {
				if r.Status == queue.Failed {
					o.Refused = append(o.Refused, RecipientRefusal{Addr: r.Addr, Error: fromOutcome(r.Error)})
				}
			}
		}
		s.release(it, true, o)
		return
	}

	cause := ue
	if cause == nil {
		for _, r := range m.Rcpts {
			if r.Status == queue.Pending && r.Error != nil {
				cause = fromOutcome(r.Error)
				break
			}
		}
	}
	s.attempted(cause)
	resume := s.upstreamState(cause)
	if resume.After(m.NextAttempt) {
		m.NextAttempt = resume
	}
	if err := s.q.Update(m); err != nil {
		log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("cannot record the delivery attempt")
	}
	logging.AttemptFailed(s.log, m, cause, delivered, pending)
	s.release(it, false, Outcome{})
}

// upstreamState acts on a failure whose class is about the account or the
// whole server, not the message (see upstream.Class), logging once per
// change of state. It returns when held deliveries resume (zero when not
// held).
func (s *Scheduler) upstreamState(e *upstream.Error) time.Time {
	if e == nil {
		return time.Time{}
	}
	switch e.Class {
	case upstream.HoldDailyLimit:
		return s.dailyLimitPause(e)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	switch e.Class {
	case upstream.PauseAccount:
		if !now.Before(s.pausedUntil) {
			s.pausedUntil, s.pausedFor = now.Add(s.pol.AuthPause), upstream.PauseAccount
			logging.Paused(s.log, e, s.pausedUntil)
		}
	case upstream.Throttled:
		// Refused for now, e.g. too many logins: back off as a whole.
		if until := now.Add(s.pol.RetryMin); until.After(s.pausedUntil) {
			s.pausedUntil, s.pausedFor = until, upstream.Throttled
		}
	case upstream.Unreachable:
		if s.down == nil {
			s.down = e
			select {
			case s.wentDown <- struct{}{}:
			default:
			}
			logging.Unreachable(s.log, e, s.pol.ProbeInterval)
		}
	}
	return s.pausedUntil
}

// prober watches an unreachable upstream and, when it answers again, makes
// every queued message due at once.
//
// It sleeps until the upstream goes down: an idle relay has no timers.
func (s *Scheduler) prober(ctx context.Context) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wentDown:
		}
		if !s.probeUntilUp(ctx) {
			return
		}
	}
}

// probeUntilUp probes every ProbeInterval until the upstream answers; false
// when ctx ended first.
func (s *Scheduler) probeUntilUp(ctx context.Context) bool {
	for {
		t := s.clock.NewTimer(s.pol.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C():
		}
		s.mu.Lock()
		down := s.down != nil
		s.mu.Unlock()
		if !down {
			return true // a retry asked for by the user lifted the state
		}
		pctx, cancel := context.WithTimeout(ctx, 2*s.pol.ProbeInterval+30*time.Second)
		err := s.up.Probe(pctx)
		cancel()
		if err != nil {
			s.log.Debug().Err(err).Msg("probe: upstream still unreachable")
			continue
		}
		now := s.clock.Now()
		s.mu.Lock()
		s.down = nil
		for _, it := range s.items {
			if !it.busy {
				it.msg.NextAttempt = now
			}
		}
		n := len(s.items)
		s.changedLocked()
		s.mu.Unlock()
		logging.Resumed(s.log, n)
		return true
	}
}

func (s *Scheduler) expire(it *item, log zerolog.Logger) {
	m := it.msg
	final := queue.Outcome{Time: s.clock.Now(), Stage: "queue", Class: string(upstream.GivenUp),
		Text: fmt.Sprintf("given up after %d attempts over %s", m.Attempts, s.pol.MaxAge)}
	why := "The log lines before this one say why it failed."
	if last := m.LastError(); last != nil {
		final.Stage, final.Port, final.Code, final.EnhancedCode = last.Stage, last.Port, last.Code, last.EnhancedCode
		final.Text += "; last error: " + last.Text
		if last.Advice != "" {
			final.Advice, why = last.Advice, last.Advice
		}
	}
	final.Remedy = fmt.Sprintf("The relay stopped retrying this message after delivery.max_age (%s). %s Once the cause is fixed, send it again, or put it back in the queue: icloud-relay queue requeue %s", s.pol.MaxAge, why, m.ID)
	s.moveToFailed(it, log, final)
}

func (s *Scheduler) failLocal(it *item, log zerolog.Logger, text string) {
	s.moveToFailed(it, log, queue.Outcome{Time: s.clock.Now(), Stage: "queue", Text: text, Class: string(upstream.Permanent),
		Remedy: "The queued copy is damaged; the message cannot be sent. Send it again."})
}

func (s *Scheduler) moveToFailed(it *item, log zerolog.Logger, final queue.Outcome) {
	m := it.msg
	for i := range m.Rcpts {
		if m.Rcpts[i].Status == queue.Pending {
			m.Rcpts[i].Status, m.Rcpts[i].Error = queue.Failed, &final
		}
	}
	if err := s.q.Fail(m, final); err != nil {
		log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("cannot move the message to the failed area")
	}
	s.reportFailure(m, log)
	delivered := 0
	for _, r := range m.Rcpts {
		if r.Status == queue.Delivered {
			delivered++
		}
	}
	logging.Failed(s.log, m, fromOutcome(&final), delivered, len(m.Rcpts)-delivered)
	s.failedOne(fromOutcome(&final))
	s.release(it, true, Outcome{})
}

// reportFailure queues a short report about a failed message for the account's own
// address, sent from that address: iCloud refuses the null sender of
// classic bounces. A notice about a notice is never sent.
func (s *Scheduler) reportFailure(m *queue.Message, log zerolog.Logger) {
	if s.pol.NoticeTo == "" || s.pol.Intake == nil || m.Notice {
		return
	}
	headers, _ := s.q.Headers(m.ID)
	subject := "(no subject)"
	for _, line := range strings.Split(headers, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "subject") {
			subject = strings.TrimSpace(v)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "From: icloud-relay <%s>\r\nTo: <%s>\r\nSubject: Undelivered: %s\r\nDate: %s\r\nAuto-Submitted: auto-generated\r\n\r\n",
		s.pol.NoticeTo, s.pol.NoticeTo, subject, s.clock.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "icloud-relay could not deliver message %s from <%s> (%q).\r\n\r\n", m.ID, m.From, subject)
	for _, r := range m.Rcpts {
		if r.Status == queue.Failed && r.Error != nil {
			fmt.Fprintf(&b, "  <%s>: %s failed: %s\r\n", r.Addr, r.Error.Stage, r.Error.Text)
		}
	}
	if f := m.Final; f != nil && f.Remedy != "" {
		fmt.Fprintf(&b, "\r\nWhat to do: %s\r\n", f.Remedy)
	}
	fmt.Fprintf(&b, "\r\nThe message is kept in the failed area: icloud-relay queue show %s\r\n", m.ID)
	// Through the intake, as any message: Received, Message-ID and the
	// sender policy apply to the relay's own mail too.
	n, st, err := s.pol.Intake.Stage(Envelope{From: s.pol.NoticeTo, Rcpts: []string{s.pol.NoticeTo},
		Helo: "localhost", Client: "127.0.0.1", Notice: true}, strings.NewReader(b.String()))
	if err == nil {
		err = s.q.Commit(st, n)
	}
	if err != nil {
		log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("cannot queue the failure notice")
		return
	}
	log.Info().Str("notice_id", n.ID).Str("to", s.pol.NoticeTo).Msg("failure notice queued")
	s.mu.Lock()
	s.items[n.ID] = &item{msg: n}
	s.changedLocked()
	s.mu.Unlock()
}

// mask returns e with the secrets in the server's text masked.
func (s *Scheduler) mask(e *upstream.Error) *upstream.Error {
	if e == nil {
		return nil
	}
	if text := s.pol.Redactor.String(e.Text); text != e.Text {
		c := *e
		c.Text, c.Err = text, errors.New(text)
		return &c
	}
	return e
}

func (s *Scheduler) maskResult(res *upstream.Result) *upstream.Result {
	if res == nil || len(res.Refused) == 0 {
		return res
	}
	c := *res
	c.Refused = make(map[string]*upstream.Error, len(res.Refused))
	for addr, e := range res.Refused {
		c.Refused[addr] = s.mask(e)
	}
	return &c
}

func outcome(e *upstream.Error, now time.Time) *queue.Outcome {
	return &queue.Outcome{Time: now, Stage: string(e.Stage), Port: e.Port, Code: e.Code,
		EnhancedCode: e.EnhancedCode, Text: e.Text, Class: string(e.Class), Advice: e.Advice, Remedy: e.Remedy}
}

// fromOutcome is the failure a record describes, with the class decided
// when it happened.
func fromOutcome(o *queue.Outcome) *upstream.Error {
	if o == nil {
		return &upstream.Error{Stage: "queue", Text: "unknown", Class: upstream.Retry}
	}
	class := upstream.Class(o.Class)
	if class == "" { // a record from before classes were saved
		class = upstream.Permanent
		if o.Temporary {
			class = upstream.Retry
		}
	}
	return &upstream.Error{Stage: upstream.Stage(o.Stage), Port: o.Port, Code: o.Code,
		EnhancedCode: o.EnhancedCode, Text: strings.TrimSpace(o.Text), Class: class, Advice: o.Advice, Remedy: o.Remedy}
}
