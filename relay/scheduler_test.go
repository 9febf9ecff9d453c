package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// fakeClock is moved by hand; its timers fire when it passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock   *fakeClock
	at      time.Time
	c       chan time.Time
	stopped bool // under clock.mu
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	t.stopped = true
	return true
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	return t
}

// advance moves the clock on and fires the timers it passes.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.stopped {
			continue
		}
		if !t.at.After(c.now) {
			t.c <- c.now
			continue
		}
		keep = append(keep, t)
	}
	c.timers = keep
}

// fakeSender answers every attempt with answer(message subject) and
// records what it was asked.
type fakeSender struct {
	mu     sync.Mutex
	answer func(subject string) error
	// between, when set, runs after a message's outcome was reported to its
	// Done, before the next message's reply would be read.
	between   func(subject string)
	probe     func() error
	roundTrip func(i int) time.Duration // what the i-th message of a batch measured (upstream.Delivery.RoundTrip)
	sent      []string                  // subjects, one per attempt
	probes    int
	attempt   chan string
}

func newFakeSender() *fakeSender {
	return &fakeSender{attempt: make(chan string, 1000), answer: func(string) error { return nil }, probe: func() error { return nil }}
}

func (f *fakeSender) SendBatch(_ context.Context, msgs []*upstream.Message) []upstream.Delivery {
	out := make([]upstream.Delivery, len(msgs))
	for i, m := range msgs {
		b := make([]byte, 512)
		n, _ := m.Body.Read(b)
		subject, _, _ := strings.Cut(strings.TrimPrefix(string(b[:n]), "Subject: "), "\r\n")
		f.mu.Lock()
		answer := f.answer
		f.sent = append(f.sent, subject)
		f.mu.Unlock()
		if err := answer(subject); err != nil {
			out[i].Err = err
		} else {
			out[i].Result = &upstream.Result{Refused: map[string]*upstream.Error{}}
		}
		if f.roundTrip != nil {
			out[i].RoundTrip = f.roundTrip(i)
		}
		if m.Done != nil {
			m.Done(out[i])
		}
		f.mu.Lock()
		between := f.between
		f.mu.Unlock()
		if between != nil {
			between(subject)
		}
		f.attempt <- subject
	}
	return out
}

func (f *fakeSender) Probe(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	return f.probe()
}

func (f *fakeSender) set(answer func(string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

// attempts waits (in real time, generously) for n attempts and returns them.
func (f *fakeSender) attempts(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case s := <-f.attempt:
			got = append(got, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d attempts, want %d", len(got), n)
		}
	}
	return got
}

// none checks that no attempt comes for a while (the scheduler settles).
func (f *fakeSender) none(t *testing.T) {
	t.Helper()
	select {
	case s := <-f.attempt:
		t.Fatalf("an attempt at %q, want none", s)
	case <-time.After(200 * time.Millisecond):
	}
}

var testPolicy = Policy{Workers: 2, RetryMin: 30 * time.Second, RetryMax: time.Hour, MaxAge: 72 * time.Hour,
	ProbeInterval: 5 * time.Second, AuthPause: time.Hour, DailyLimit: 1000}

// schedulerWith runs a scheduler with a fake clock and a sender that
// answers every attempt with answer, over a real queue holding the given
// messages.
func schedulerWith(t *testing.T, answer func(string) error, subjects ...string) (*Scheduler, *fakeSender, *fakeClock, *queue.Queue) {
	t.Helper()
	up := newFakeSender()
	up.answer = answer // before the first attempt
	return schedulerFor(t, up, subjects...)
}

// schedulerFor is schedulerWith with a sender of the test's own.
func schedulerFor(t *testing.T, up *fakeSender, subjects ...string) (*Scheduler, *fakeSender, *fakeClock, *queue.Queue) {
	t.Helper()
	q, err := queue.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subjects {
		m := &queue.Message{From: "me@icloud.com", Rcpts: []queue.Recipient{{Addr: "a@example.com", Status: queue.Pending}}}
		if err := q.Enqueue(m, strings.NewReader("Subject: "+s+"\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	clock := &fakeClock{now: time.Now()}
	pol := testPolicy
	pol.Clock = clock
	s := NewScheduler(q, up, pol, zerolog.New(zerolog.NewTestWriter(t)))
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Wait() })
	return s, up, clock, q
}

// replied is the upstream answering code and text at stage, classified as
// the client classifies it.
func replied(stage upstream.Stage, code int, text string) *upstream.Error {
	return upstream.Classify(stage, 0, &smtp.SMTPError{Code: code, Message: text})
}

// waitFor polls cond in real time (the scheduler runs in goroutines).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// tick moves the clock on by step, again and again, until cond holds: a
// worker re-arms its timer after each step, which a single step could
// outrun.
func tick(t *testing.T, what string, clock *fakeClock, step time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		clock.advance(step)
		time.Sleep(10 * time.Millisecond)
	}
}

// Messages that failed together do not retry together: the backoff's
// jitter is applied where retries are scheduled.
func TestMessagesThatFailTogetherRetryApart(t *testing.T) {
	var subjects []string
	for i := 0; i < 24; i++ {
		subjects = append(subjects, "m"+string(rune('a'+i)))
	}
	_, up, _, q := schedulerWith(t, func(string) error { return replied(upstream.StageData, 451, "busy") }, subjects...)
	up.attempts(t, len(subjects))
	var first, last time.Time
	waitFor(t, "every failure filed", func() bool {
		msgs, _ := q.Active()
		n := 0
		for _, m := range msgs {
			if m.Attempts >= 1 && m.LastError() != nil {
				n++
			}
		}
		return n == len(subjects)
	})
	msgs, _ := q.Active()
	for _, m := range msgs {
		if first.IsZero() || m.NextAttempt.Before(first) {
			first = m.NextAttempt
		}
		if m.NextAttempt.After(last) {
			last = m.NextAttempt
		}
	}
	if spread := last.Sub(first); spread < 2*time.Second {
		t.Fatalf("24 messages that failed together retry within %s of each other (retry_min 30s, ±20%% jitter)", spread)
	}
}

// A message that keeps failing is given up at max_age: it goes to the
// failed area with a final record that says so and why.
func TestGiveUpAtMaxAge(t *testing.T) {
	_, up, clock, q := schedulerWith(t, func(string) error { return replied(upstream.StageRcpt, 451, "mailbox busy") }, "doomed")
	up.attempts(t, 1)
	// Hours of retries up to an hour before max_age: not given up early.
	for i := 0; i < int(testPolicy.MaxAge/time.Hour)-1; i++ {
		clock.advance(time.Hour)
		time.Sleep(2 * time.Millisecond)
	}
	if failed, _ := q.Failed(); len(failed) != 0 {
		t.Fatal("given up before max_age")
	}
	// To a minute before, then in seconds, so that a worker a few steps
	// behind still shows when it gave up.
	clock.advance(59 * time.Minute)
	tick(t, "the message in the failed area", clock, time.Second, func() bool {
		failed, _ := q.Failed()
		act, _ := q.Active()
		return len(failed) == 1 && len(act) == 0 // Fail writes the failed copy first
	})
	failed, _ := q.Failed()
	f := failed[0].Final
	if f == nil || !strings.Contains(f.Text, "given up after") || !strings.Contains(f.Text, "mailbox busy") ||
		f.Class != string(upstream.GivenUp) || !strings.Contains(f.Remedy, "stopped retrying") || strings.Contains(f.Remedy, "retries by itself") {
		t.Fatalf("final record: %+v; want it given up, saying so and not that the relay retries", f)
	}
	if age := f.Time.Sub(failed[0].Received); age < testPolicy.MaxAge || age > testPolicy.MaxAge+10*time.Minute {
		t.Fatalf("given up at age %s, want max_age %s", age, testPolicy.MaxAge)
	}
	if act, _ := q.Active(); len(act) != 0 {
		t.Fatalf("%d still queued", len(act))
	}
}

// Even while the upstream is unreachable (nothing is retried, a probe
// watches), a message reaches the failed area at max_age, on time.
func TestGiveUpAtMaxAgeWhileUnreachable(t *testing.T) {
	down := func() error { return replied(upstream.StageConnect, 0, "connection refused") }
	_, up, clock, q := schedulerWith(t, func(string) error { return down() }, "stranded")
	up.mu.Lock()
	up.probe = down
	up.mu.Unlock()
	up.attempts(t, 1)
	tick(t, "the message in the failed area while the upstream is down", clock, 6*time.Hour, func() bool { failed, _ := q.Failed(); return len(failed) == 1 })
}

// A refused login (535) pauses every delivery for auth_pause: no message
// burns its retries meanwhile; then deliveries resume.
func TestRefusedLoginPausesEverything(t *testing.T) {
	s, up, clock, q := schedulerWith(t, func(string) error {
		return upstream.Classify(upstream.StageAuth, 0, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "invalid credentials"})
	}, "first")
	up.attempts(t, 1)
	waitFor(t, "the pause in force", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.pausedUntil.After(clock.Now()) })
	// More mail while paused, and time passing short of the pause.
	m := &queue.Message{From: "me@icloud.com", Rcpts: []queue.Recipient{{Addr: "b@example.com", Status: queue.Pending}}}
	if err := q.Enqueue(m, strings.NewReader("Subject: second\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	s.Submit(m, nil)
	for i := 0; i < 5; i++ {
		clock.advance(10 * time.Minute)
		up.none(t)
	}
	up.set(func(string) error { return nil })
	tick(t, "both delivered after the pause", clock, 5*time.Minute, func() bool { act, _ := q.Active(); return len(act) == 0 })
}

// iCloud's daily sending limit holds the queue until the rolling day
// frees up, at MAIL or at RCPT alike; the message does not fail.
func TestDailyLimitHoldsTheQueue(t *testing.T) {
	for _, stage := range []upstream.Stage{upstream.StageMail, upstream.StageRcpt} {
		t.Run(string(stage), func(t *testing.T) {
			limit := upstream.Classify(stage, 0, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
				Message: "<me@icloud.com>: You have exceeded your daily sending limit. Please try again later."})
			_, up, clock, q := schedulerWith(t, func(string) error { return limit }, "over the limit")
			up.attempts(t, 1)
			// Held (an hour at least, when the relay counted none of the
			// day's sending itself), not retried with the usual backoff.
			for i := 0; i < 5; i++ {
				clock.advance(10 * time.Minute)
				up.none(t)
			}
			if failed, _ := q.Failed(); len(failed) != 0 {
				t.Fatal("the daily limit failed a message for good")
			}
			up.set(func(string) error { return nil })
			tick(t, "delivered once the day rolled over", clock, 10*time.Minute, func() bool { act, _ := q.Active(); return len(act) == 0 })
		})
	}
}

// An unreachable upstream is watched by a probe; the queue waits without
// burning retries and is sent at once when the probe gets through.
func TestProbeDrainsTheQueueWhenTheUpstreamIsBack(t *testing.T) {
	down := func() error { return replied(upstream.StageConnect, 0, "connection refused") }
	_, up, clock, q := schedulerWith(t, func(string) error { return down() }, "one", "two", "three")
	up.mu.Lock()
	up.probe = down
	up.mu.Unlock()
	up.attempts(t, 3) // the first attempt (one batch) finds the upstream down
	up.none(t)
	for i := 0; i < 3; i++ {
		clock.advance(testPolicy.ProbeInterval)
		up.none(t)
	}
	up.mu.Lock()
	probes := up.probes
	up.probe = func() error { return nil }
	up.mu.Unlock()
	if probes == 0 {
		t.Fatal("no probe while the upstream was down")
	}
	up.set(func(string) error { return nil })
	// One probe interval, far short of the messages' own backoff (24 s at
	// least): they go because the probe got through, and at once.
	clock.advance(testPolicy.ProbeInterval)
	up.attempts(t, 3)
	waitFor(t, "the queue drained", func() bool { act, _ := q.Active(); return len(act) == 0 })
}

// A delivered message leaves the queue as soon as its reply is read, while
// the rest of its batch is still unanswered: a crash then sends again only
// what the upstream had not yet answered.
func TestADeliveredMessageLeavesTheQueueBeforeTheNextReply(t *testing.T) {
	q, err := queue.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, subject := range []string{"batch-0", "batch-1", "batch-2", "batch-3"} {
		m := &queue.Message{From: "me@icloud.com", Rcpts: []queue.Recipient{{Addr: "a@example.com", Status: queue.Pending}}}
		if err := q.Enqueue(m, strings.NewReader("Subject: "+subject+"\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
		ids[subject] = m.ID
	}
	up := newFakeSender()
	var kept []string
	up.between = func(subject string) {
		if _, err := q.Get(ids[subject]); err == nil {
			kept = append(kept, subject)
		}
	}
	pol := testPolicy
	pol.Workers, pol.Clock = 1, &fakeClock{now: time.Now()}
	s := NewScheduler(q, up, pol, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); s.Wait() }()
	up.attempts(t, 4)
	waitFor(t, "the queue empty", func() bool { act, _ := q.Active(); return len(act) == 0 })
	if len(kept) > 0 {
		t.Fatalf("still queued after their replies were read: %v", kept)
	}
}

// stagedMessage stages a message in q as a door does before Submit, due
// now by clock.
func stagedMessage(t *testing.T, q *queue.Queue, clock *fakeClock, subject string) (*queue.Message, *queue.Staged) {
	t.Helper()
	m := &queue.Message{From: "me@icloud.com", Rcpts: []queue.Recipient{{Addr: "a@example.com", Status: queue.Pending}}, NextAttempt: clock.Now()}
	st, err := q.Stage(m, strings.NewReader("Subject: "+subject+"\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m, st
}

// closed waits (in real time, generously) for ch to be closed.
func closed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	if ch == nil {
		t.Fatalf("%s: no channel", what)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("never: %s", what)
	}
}

func filesOf(t *testing.T, q *queue.Queue, id string) []string {
	t.Helper()
	var got []string
	for _, area := range []string{"active", "failed"} {
		found, _ := filepath.Glob(filepath.Join(q.Dir(), area, id+".*"))
		for _, f := range found {
			got = append(got, area+"/"+filepath.Base(f))
		}
	}
	sort.Strings(got)
	return got
}

// A staged message is its door's until the door settles it: a worker
// sends it meanwhile but never commits, discards or files it; the door
// commits (or discards what the upstream took whole), then the attempt's
// result is filed.
func TestAStagedMessageHasOneOwner(t *testing.T) {
	t.Run("attempt failed first: nothing on disk until the door commits", func(t *testing.T) {
		s, _, clock, q := schedulerWith(t, func(string) error { return replied(upstream.StageData, 451, "later") })
		m, st := stagedMessage(t, q, clock, "fails")
		closed(t, "the attempt", s.Submit(m, st))
		if got := filesOf(t, q, m.ID); len(got) != 0 { // its data is in memory
			t.Fatalf("the worker settled a message its door owns: %v", got)
		}
		o, err := s.Settle(m.ID)
		if err != nil || o.Delivered || o.Refusal != nil {
			t.Fatalf("settle: %+v %v, want queued", o, err)
		}
		got, err := q.Get(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Attempts != 1 || !got.NextAttempt.After(clock.Now()) || got.LastError() == nil {
			t.Fatalf("the attempt was not filed after the commit: %+v", got)
		}
	})
	t.Run("delivered first: discarded, never committed", func(t *testing.T) {
		s, _, clock, q := schedulerWith(t, func(string) error { return nil })
		m, st := stagedMessage(t, q, clock, "fast")
		closed(t, "the attempt", s.Submit(m, st))
		o, err := s.Settle(m.ID)
		if err != nil || !o.Delivered {
			t.Fatalf("settle: %+v %v, want delivered", o, err)
		}
		if got := filesOf(t, q, m.ID); len(got) != 0 {
			t.Fatalf("left: %v", got)
		}
		if err := q.Commit(st, m); !errors.Is(err, queue.ErrDiscarded) {
			t.Fatalf("the staged data was not discarded: %v", err)
		}
	})
	t.Run("refused first: committed, then failed", func(t *testing.T) {
		s, _, clock, q := schedulerWith(t, func(string) error { return replied(upstream.StageData, 554, "no") })
		m, st := stagedMessage(t, q, clock, "refused")
		closed(t, "the attempt", s.Submit(m, st))
		o, err := s.Settle(m.ID)
		if err != nil || o.Refusal == nil || o.Refusal.Code != 554 {
			t.Fatalf("settle: %+v %v, want the refusal", o, err)
		}
		if got := filesOf(t, q, m.ID); strings.Join(got, " ") != "failed/"+m.ID+".eml failed/"+m.ID+".json" {
			t.Fatalf("files: %v", got)
		}
	})
	t.Run("door commits mid-attempt: the worker files after", func(t *testing.T) {
		release := make(chan struct{})
		s, up, clock, q := schedulerWith(t, func(string) error { <-release; return nil })
		m, st := stagedMessage(t, q, clock, "slow")
		s.Submit(m, st)
		waitFor(t, "the attempt to start", func() bool { up.mu.Lock(); defer up.mu.Unlock(); return len(up.sent) == 1 })
		o, err := s.Settle(m.ID) // the window ran out
		if err != nil || o.Delivered {
			t.Fatalf("settle: %+v %v, want queued", o, err)
		}
		if _, err := q.Get(m.ID); err != nil {
			t.Fatalf("not committed: %v", err)
		}
		close(release)
		waitFor(t, "the delivered message removed", func() bool { return len(filesOf(t, q, m.ID)) == 0 && s.Len() == 0 })
	})
	t.Run("the door cannot store it mid-attempt: nothing is left, nothing filed", func(t *testing.T) {
		release := make(chan struct{})
		s, up, clock, q := schedulerWith(t, func(string) error { <-release; return replied(upstream.StageData, 451, "later") })
		m, st := stagedMessage(t, q, clock, "nospace")
		s.Submit(m, st)
		waitFor(t, "the attempt to start", func() bool { up.mu.Lock(); defer up.mu.Unlock(); return len(up.sent) == 1 })
		tmp := filepath.Join(q.Dir(), "tmp")
		os.RemoveAll(tmp)
		os.WriteFile(tmp, nil, 0o600) // the metadata's temp file cannot be made
		if _, err := s.Settle(m.ID); err == nil {
			t.Fatal("settle stored a message the queue could not take")
		}
		close(release)
		waitFor(t, "the scheduler to forget it", func() bool { return s.Len() == 0 })
		up.attempts(t, 1)
		up.none(t) // no retry: it is not queued
		if got := filesOf(t, q, m.ID); len(got) != 0 {
			t.Fatalf("left: %v", got)
		}
	})
	t.Run("door and worker race: each message ends once", func(t *testing.T) {
		s, up, clock, q := schedulerWith(t, func(subject string) error {
			time.Sleep(time.Duration(len(subject)%3) * time.Millisecond)
			if strings.HasSuffix(subject, "7") {
				return replied(upstream.StageData, 451, "later")
			}
			return nil
		})
		var wg sync.WaitGroup
		for i := range 60 {
			m, st := stagedMessage(t, q, clock, fmt.Sprintf("race-%d", i))
			tried := s.Submit(m, st)
			wg.Add(1)
			go func() {
				defer wg.Done()
				select { // the window: 0-2 ms
				case <-tried:
				case <-time.After(time.Duration(i%3) * time.Millisecond):
				}
				if _, err := s.Settle(m.ID); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		waitFor(t, "only the retried messages queued", func() bool {
			act, _ := q.Active()
			return len(act) == 6 && s.Len() == 6
		})
		if failed, _ := q.Failed(); len(failed) != 0 {
			t.Fatalf("%d failed", len(failed))
		}
		up.mu.Lock()
		defer up.mu.Unlock()
		if len(up.sent) != 60 {
			t.Fatalf("%d attempts for 60 messages", len(up.sent))
		}
	})
}

// The upstream is near when its round trip lately was shorter than
// nearby, however long it worked on each message (without PIPELINING a
// batch's last message ends long after the batch began): a bulk client
// waits only for a near one (bulk.go). A round trip measured on one
// message of a batch stands for the batch.
func TestNearUpstreamIsAboutTheRoundTrip(t *testing.T) {
	if NewScheduler(nil, newFakeSender(), testPolicy, zerolog.Nop()).NearUpstream() {
		t.Fatal("near before anything was sent")
	}
	for _, c := range []struct {
		roundTrip time.Duration
		near      bool
	}{{time.Millisecond, true}, {20 * time.Millisecond, false}} {
		t.Run(fmt.Sprintf("a %v round trip", c.roundTrip), func(t *testing.T) {
			subjects := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
			up := newFakeSender()
			up.roundTrip = func(i int) time.Duration {
				if i == 0 {
					return c.roundTrip
				}
				return 0 // not measured: sent behind the first
			}
			s, _, _, _ := schedulerFor(t, up, subjects...)
			up.attempts(t, len(subjects))
			waitFor(t, "every message delivered", func() bool { return s.Len() == 0 })
			if got := s.NearUpstream(); got != c.near {
				t.Fatalf("near upstream: %v, want %v", got, c.near)
			}
		})
	}
}
