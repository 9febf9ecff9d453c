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
	Lost      error           // a staged message could not be stored, why: the client must send it again
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
// pool of workers. Each message has one owner at a time (item.busy), so no
// message is sent twice concurrently.
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
	sent        sendCounter
	wg          sync.WaitGroup
}

type item struct {
	msg     *queue.Message
	busy    bool
	waiters []chan Outcome

	// A staged message (queue.Stage) is committed by whoever needs it
	// durable first: the worker when the upstream did not take it, or the
	// waiting client's session when the sync window ends. smu orders them.
	smu      sync.Mutex
	staged   *queue.Staged
	snapshot *queue.Message // the metadata to commit: as received, never tried
	lostErr  error          // committing failed, why: the message is gone

	removed bool // the upstream took it all and its files are gone (deliver)
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
		s.log.Info().Int("queued", len(msgs)).Msg("picked up queued messages")
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

// Submit hands a message to delivery. A staged message (st not nil) is
// one whose client waits: when the upstream is usable, Submit returns a
// channel that receives the first attempt's outcome; otherwise nil. Either
// way the caller must call Commit before telling the client "queued".
func (s *Scheduler) Submit(m *queue.Message, st *queue.Staged) <-chan Outcome {
	s.mu.Lock()
	it := &item{msg: m, staged: st}
	if st != nil {
		it.snapshot = m.Clone()
	}
	var ch chan Outcome
	if st != nil && s.usable(s.clock.Now()) {
		ch = make(chan Outcome, 1)
		it.waiters = append(it.waiters, ch)
	}
	s.items[m.ID] = it
	s.changedLocked()
	s.mu.Unlock()
	return ch
}

// Commit makes a staged message durable, unless its attempt already
// settled it (delivered, or committed by the worker). On failure the
// message is dropped, and its client must be told to send it again.
func (s *Scheduler) Commit(id string) error {
	s.mu.Lock()
	it := s.items[id]
	s.mu.Unlock()
	if it == nil {
		return nil // settled and filed: its outcome tells
	}
	it.smu.Lock()
	defer it.smu.Unlock()
	if it.lostErr != nil {
		return it.lostErr // the worker failed to commit it
	}
	if it.staged == nil {
		return nil
	}
	err := s.q.Commit(it.staged, it.snapshot)
	it.staged = nil
	if err != nil {
		it.lostErr = err
		s.mu.Lock()
		if !it.busy {
			delete(s.items, id)
		}
		s.mu.Unlock()
	}
	return err
}

// settle ends the staging of it's message, if it is still staged: the
// upstream has it all (the data is removed), or it must be kept
// (committed). It reports whether the message was staged; an error means
// the message is lost (it could not be committed, now or before).
func (s *Scheduler) settle(it *item, delivered bool) (wasStaged bool, err error) {
	it.smu.Lock()
	defer it.smu.Unlock()
	if it.lostErr != nil {
		return true, it.lostErr
	}
	st := it.staged
	if st == nil {
		return false, nil
	}
	it.staged = nil
	if delivered {
		s.q.Discard(st)
		return true, nil
	}
	if err := s.q.Commit(st, it.snapshot); err != nil {
		it.lostErr = err
		return true, err
	}
	return true, nil
}

// dropLost ends a message that could not be stored.
func (s *Scheduler) dropLost(it *item, log zerolog.Logger, err error) {
	log.Error().Err(err).Str("stage", "queue").
		Str("remedy", "The queue directory cannot be written: check free disk space and permissions of queue.dir.").
		Msg("cannot store the message; its client was told to send it again")
	s.release(it, true, Outcome{Lost: err})
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
		if best == nil || len(it.waiters) > len(best.waiters) ||
			(len(it.waiters) == len(best.waiters) && it.msg.NextAttempt.Before(best.msg.NextAttempt)) {
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
			if it.busy || (len(it.waiters) > 0) != waiting || it.msg.NextAttempt.After(now) ||
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
		log := s.log.With().Str("queue_id", m.ID).Logger()
		if !now.Before(m.Received.Add(s.pol.MaxAge)) {
			s.expire(it, log)
			continue
		}
		// Save a retry before any network I/O: a crash mid-delivery must
		// not make the message look less tried. A first attempt needs no
		// record (saving two fsyncs per message): after a crash every
		// queued message is tried again at start anyway.
		m.Attempts++
		m.NextAttempt = now.Add(Backoff(m.Attempts, s.pol.RetryMin, s.pol.RetryMax, rand.Float64()))
		if err := s.saveRetry(m); err != nil {
			log.Error().Err(err).Str("stage", "queue").Int("attempt", m.Attempts).
				Str("remedy", "The queue directory cannot be written: check free disk space and permissions of queue.dir.").
				Msg("cannot record delivery attempt; will retry")
			s.release(it, false, Outcome{})
			continue
		}
		body, err := s.q.Body(m.ID)
		if err != nil {
			s.failLocal(it, log, fmt.Sprintf("message data unreadable: %v", err))
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
	for i, d := range out {
		bodies[i].Close()
		s.fileDelivery(ctx, ready[i], logs[i], d, now)
	}
}

// remove takes a message the upstream has whole out of the queue (or drops
// its staged data): the one step that cannot wait.
func (s *Scheduler) remove(it *item, log zerolog.Logger) {
	wasStaged, err := s.settle(it, true)
	if err == nil && !wasStaged {
		err = s.q.Delete(it.msg.ID)
	}
	if err != nil {
		log.Error().Err(err).Str("stage", "queue").Msg("delivered, but could not remove the message from the queue; it may be sent again after a restart")
		return
	}
	it.removed = true
}

// fileDelivery files one message's outcome from a batch.
func (s *Scheduler) fileDelivery(ctx context.Context, it *item, log zerolog.Logger, d upstream.Delivery, started time.Time) {
	if ctx.Err() != nil && d.Err != nil {
		// Cut short by shutdown: not a failure of the message.
		if _, err := s.settle(it, false); err != nil {
			s.dropLost(it, log, err)
			return
		}
		log.Info().Int("attempt", it.msg.Attempts).Msg("delivery interrupted by shutdown; the message stays queued")
		s.release(it, false, Outcome{})
		return
	}
	var ue *upstream.Error
	if err := d.Err; err != nil && !errors.As(err, &ue) {
		ue = &upstream.Error{Stage: "data", Text: err.Error(), Temporary: true, Err: err,
			Remedy: "An unexpected error; the relay retries by itself."}
	}
	s.file(it, log, d.Result, ue, started)
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
	all := ue == nil && (res == nil || len(res.Refused) == 0)
	wasStaged, err := s.settle(it, all)
	if err != nil {
		s.dropLost(it, log, err)
		return
	}
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
			r.Error = outcome(rerr, now)
			if !rerr.Temporary && !isDailyLimit(rerr) {
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
			// A refused login or the daily limit is about the account, not
			// this message: it waits instead of failing.
			if !ue.Temporary && !ue.AccountProblem() && !isDailyLimit(ue) {
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
			// A staged message was never committed: settle removed its data.
			if !wasStaged && !it.removed {
				if err := s.q.Delete(m.ID); err != nil {
					log.Error().Err(err).Str("stage", "queue").Msg("delivered, but could not remove the message from the queue; it may be sent again after a restart")
				}
			}
			log.Info().Int("port", port).Int("attempt", m.Attempts).Int("rcpts", delivered).Dur("took", took).Msg("delivered")
			s.release(it, true, Outcome{Delivered: true})
			return
		}
		final := *outcome(firstFail, now)
		if err := s.q.Fail(m, final); err != nil {
			log.Error().Err(err).Str("stage", "queue").Msg("cannot move the message to the failed area")
		}
		s.reportFailure(m, log)
		ev := log.Error()
		withError(ev, firstFail).Int("attempt", m.Attempts).Int("delivered", delivered).Int("failed", failed)
		ev.Msg("delivery failed permanently; message moved to the failed area")
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
	resume := s.upstreamState(cause)
	if isDailyLimit(cause) {
		resume = s.dailyLimitPause(cause)
	}
	if resume.After(m.NextAttempt) {
		m.NextAttempt = resume
	}
	if err := s.q.Update(m); err != nil {
		log.Error().Err(err).Str("stage", "queue").Msg("cannot record the delivery attempt")
	}
	ev := log.Warn()
	withError(ev, cause).Int("attempt", m.Attempts).Time("next_retry", m.NextAttempt).
		Int("delivered", delivered).Int("pending", pending)
	ev.Msg("delivery failed; will retry")
	s.release(it, false, Outcome{})
}

// upstreamState pauses or marks the upstream down when the failure is about
// the account or the whole server, logging once per change of state. It
// returns when paused deliveries resume (zero when not paused).
func (s *Scheduler) upstreamState(e *upstream.Error) time.Time {
	if e == nil {
		return time.Time{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	switch {
	case e.AccountProblem() && !now.Before(s.pausedUntil):
		s.pausedUntil = now.Add(s.pol.AuthPause)
		ev := s.log.Error()
		withError(ev, e).Time("next_retry", s.pausedUntil)
		ev.Msg("iCloud refused the login: all deliveries paused (messages stay queued); fix the password or username and restart, or wait")
	case e.Stage == upstream.StageAuth && e.Temporary:
		// Refused for now, e.g. too many logins: back off as a whole.
		s.pausedUntil = now.Add(s.pol.RetryMin)
	case e.Unreachable() && s.down == nil:
		s.down = e
		select {
		case s.wentDown <- struct{}{}:
		default:
		}
		ev := s.log.Warn()
		withError(ev, e).Dur("probe_every", s.pol.ProbeInterval)
		ev.Msg("upstream unreachable: queued messages wait and are sent as soon as a probe sees it again")
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
		s.log.Info().Int("queued", n).Msg("upstream reachable again: delivering queued messages now")
		return true
	}
}

func (s *Scheduler) expire(it *item, log zerolog.Logger) {
	m := it.msg
	final := queue.Outcome{Time: s.clock.Now(), Stage: "queue",
		Text:   fmt.Sprintf("gave up after %d attempts over %s", m.Attempts, s.pol.MaxAge),
		Remedy: "The message could not be delivered in time; the log lines before this one say why. Send it again once the cause is fixed."}
	if last := m.LastError(); last != nil {
		final.Stage, final.Port, final.Code, final.EnhancedCode = last.Stage, last.Port, last.Code, last.EnhancedCode
		final.Text += "; last error: " + last.Text
		if last.Remedy != "" {
			final.Remedy = last.Remedy
		}
	}
	s.moveToFailed(it, log, final)
}

func (s *Scheduler) failLocal(it *item, log zerolog.Logger, text string) {
	s.moveToFailed(it, log, queue.Outcome{Time: s.clock.Now(), Stage: "queue", Text: text,
		Remedy: "The queued copy is damaged; the message cannot be sent. Send it again."})
}

func (s *Scheduler) moveToFailed(it *item, log zerolog.Logger, final queue.Outcome) {
	m := it.msg
	if _, err := s.settle(it, false); err != nil {
		s.dropLost(it, log, err)
		return
	}
	for i := range m.Rcpts {
		if m.Rcpts[i].Status == queue.Pending {
			m.Rcpts[i].Status, m.Rcpts[i].Error = queue.Failed, &final
		}
	}
	if err := s.q.Fail(m, final); err != nil {
		log.Error().Err(err).Str("stage", "queue").Msg("cannot move the message to the failed area")
	}
	s.reportFailure(m, log)
	log.Error().Str("stage", final.Stage).Int("port", final.Port).Int("smtp_code", final.Code).
		Str("enhanced_code", final.EnhancedCode).Int("attempt", m.Attempts).Str("remedy", final.Remedy).
		Str("error", final.Text).Msg("message moved to the failed area")
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
		log.Error().Err(err).Str("stage", "queue").Msg("cannot queue the failure notice")
		return
	}
	log.Info().Str("notice_id", n.ID).Str("to", s.pol.NoticeTo).Msg("failure notice queued")
	s.mu.Lock()
	s.items[n.ID] = &item{msg: n}
	s.changedLocked()
	s.mu.Unlock()
}

// withError adds the contract's failure fields to a log event.
func withError(ev *zerolog.Event, e *upstream.Error) *zerolog.Event {
	if e == nil {
		return ev
	}
	ev.Str("stage", string(e.Stage))
	if e.Port != 0 {
		ev.Int("port", e.Port)
	}
	if e.Code != 0 {
		ev.Int("smtp_code", e.Code)
	}
	if e.EnhancedCode != "" {
		ev.Str("enhanced_code", e.EnhancedCode)
	}
	return ev.Str("error", e.Text).Str("remedy", e.Remedy)
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
		EnhancedCode: e.EnhancedCode, Text: e.Text, Remedy: e.Remedy, Temporary: e.Temporary}
}

func fromOutcome(o *queue.Outcome) *upstream.Error {
	if o == nil {
		return &upstream.Error{Stage: "queue", Text: "unknown", Temporary: true}
	}
	return &upstream.Error{Stage: upstream.Stage(o.Stage), Port: o.Port, Code: o.Code,
		EnhancedCode: o.EnhancedCode, Text: strings.TrimSpace(o.Text), Remedy: o.Remedy, Temporary: o.Temporary}
}
