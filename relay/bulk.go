package relay

import (
	"sync"
	"time"
)

// bulkTracker tells an interactive submission from a bulk one. A person at
// a keyboard sends one message now and then and is owed the upstream's
// verdict (the sync window); a script, a scanner burst or a queue flush
// sends message after message, and waiting for iCloud's round trips on
// each would make it pay them all in a row. The rule: a message is bulk
// when the same client address had another message in flight when this
// one began, or finished one less than gap before; it is then committed
// and answered at once (no sync window). A refusal after that goes to the
// failed area and the failure notice, as after any sync window that runs
// out. Where the upstream is nearby (a round trip shorter than a commit: on
// this machine or network), waiting costs a bulk client little and it keeps the
// whole sync window: its message then needs no fsync at all, and a refusal
// reaches it.
type bulkTracker struct {
	gap time.Duration // 0: no message is bulk

	mu     sync.Mutex
	recent map[string]*clientRun
}

type clientRun struct {
	inFlight int
	last     time.Time // when its last message was answered
}

// nearby is about what a commit (three fsyncs) costs on an SSD: an
// upstream whose round trip is shorter (on the same machine or network)
// is worth waiting for; iCloud across the internet is not, and a bulk
// client is answered once its message is on disk. (Waiting a few
// milliseconds for such an upstream first, tried, only added them to every
// message: 27.9× direct at c=1 with a 20 ms upstream in the bench, 67× without.)
const nearby = 5 * time.Millisecond

// maxTracked bounds the map: past it, clients idle for longer than gap
// are forgotten.
const maxTracked = 4096

func newBulkTracker(gap time.Duration) *bulkTracker {
	return &bulkTracker{gap: gap, recent: map[string]*clientRun{}}
}

// begin records that client starts a message and says whether it is bulk;
// the caller calls done when the client has its answer.
func (b *bulkTracker) begin(client string, now time.Time) (bulk bool, done func()) {
	if b.gap <= 0 {
		return false, func() {}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.recent[client]
	if r == nil {
		if len(b.recent) >= maxTracked {
			b.forget(now)
		}
		r = &clientRun{}
		b.recent[client] = r
	}
	bulk = r.inFlight > 0 || (!r.last.IsZero() && now.Sub(r.last) < b.gap)
	r.inFlight++
	return bulk, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		r.inFlight--
		r.last = time.Now()
	}
}

func (b *bulkTracker) forget(now time.Time) {
	for c, r := range b.recent {
		if r.inFlight == 0 && now.Sub(r.last) >= b.gap {
			delete(b.recent, c)
		}
	}
}

// measured adds a batch's round trip (upstream.Delivery.RoundTrip) to the
// moving average. The round trip, not how long deliveries take: the work a
// server does for the data (and, without PIPELINING, a message's wait
// behind the batch's others) is not what waiting saves. Timed from the
// attempt's start, an aiosmtpd on loopback (no PIPELINING) looked slower
// than a commit: in bench --upstream its bulk messages were committed,
// 1.7x and 0.9x direct at 8 and 32 clients with 0.6 and 1.2 ms of relay
// CPU a message, against 2.4x and 2.2x with 0.4 and 0.3 ms when they
// waited (BENCHMARKS.md).
func (s *Scheduler) measured(rt time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.roundTrip == 0 {
		s.roundTrip = rt
		return
	}
	s.roundTrip += (rt - s.roundTrip) / 8
}

// NearUpstream says whether the upstream's round trip lately was shorter
// than nearby: an upstream on this machine or its network, which a bulk
// client may wait for at little cost (its messages then need no fsync, and
// a refusal reaches it). Unknown (nothing sent yet) is not near.
func (s *Scheduler) NearUpstream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roundTrip > 0 && s.roundTrip < nearby
}
