package relay

import (
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/logging"
)

// throttledEvent is a log event that a flood must not turn into a flood of
// lines: it is written at most once an interval, and what it holds back it
// counts and reports in one summary line when the interval ends.
type throttledEvent struct {
	log    zerolog.Logger
	level  zerolog.Level
	msg    string
	remedy string
	every  time.Duration

	mu    sync.Mutex
	until time.Time // lines are held back until then
	held  int
	timer *time.Timer
}

func (t *throttledEvent) event(fields func(*zerolog.Event)) {
	t.mu.Lock()
	now := time.Now()
	if now.Before(t.until) {
		t.held++
		if t.timer == nil {
			t.timer = time.AfterFunc(t.until.Sub(now), t.summary)
		}
		t.mu.Unlock()
		return
	}
	t.until = now.Add(t.every)
	t.mu.Unlock()
	ev := t.log.WithLevel(t.level).Str(logging.KeyStage, "accept")
	fields(ev)
	ev.Str(logging.KeyRemedy, t.remedy).Msg(t.msg)
}

func (t *throttledEvent) summary() {
	t.mu.Lock()
	n := t.held
	t.held, t.timer = 0, nil
	t.mu.Unlock()
	if n > 0 {
		t.log.WithLevel(t.level).Str(logging.KeyStage, "accept").Int("repeated", n).Int64("interval_ms", t.every.Milliseconds()).
			Str("remedy", t.remedy).Msg(t.msg + " (repeated)")
	}
}

func (t *throttledEvent) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
}

// refusalLogs are the listener's events that a client can cause at will.
type refusalLogs struct {
	notAllowed, tooMany, tooManyFromClient, timedOut, acceptFailed *throttledEvent
}

// refusalInterval is how often each of them is written at most.
const refusalInterval = time.Minute

func newRefusalLogs(log zerolog.Logger, every time.Duration) refusalLogs {
	ev := func(level zerolog.Level, msg, remedy string) *throttledEvent {
		return &throttledEvent{log: log, level: level, msg: msg, remedy: remedy, every: every}
	}
	return refusalLogs{
		notAllowed: ev(zerolog.WarnLevel, "connection refused: address not in listen.allow",
			"Add the client's network to listen.allow (and set [[listen.users]]) if it should be able to send."),
		tooMany: ev(zerolog.WarnLevel, "connection refused: too many connections",
			"Clients open too many connections at once; raise listen.max_connections if that is expected."),
		tooManyFromClient: ev(zerolog.WarnLevel, "connection refused: too many connections from one client",
			"One client opens too many connections at once; raise listen.max_connections_per_client if that is expected."),
		timedOut: ev(zerolog.WarnLevel, "client connection timed out; closed",
			"A client stopped in the middle of a conversation. If it is yours, check its network; for a very slow client raise listen.timeout."),
		acceptFailed: ev(zerolog.ErrorLevel, "cannot accept a connection; retrying",
			"The relay is out of open files or another system resource: lower listen.max_connections or raise the open-file limit (ulimit -n, LimitNOFILE=)."),
	}
}

func (r refusalLogs) stop() {
	for _, t := range []*throttledEvent{r.notAllowed, r.tooMany, r.tooManyFromClient, r.timedOut, r.acceptFailed} {
		t.stop()
	}
}
