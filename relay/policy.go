package relay

import (
	"math"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/redact"
)

// Policy is the delivery and retry policy.
type Policy struct {
	Workers       int
	SyncWindow    time.Duration // how long a connected client waits for the first attempt
	RetryMin      time.Duration // first retry delay
	RetryMax      time.Duration // longest retry delay
	MaxAge        time.Duration // give up on a message this old
	ProbeInterval time.Duration // how often an unreachable upstream is probed
	AuthPause     time.Duration // how long a refused login pauses deliveries
	NoticeTo      string        // when set, failures are reported to this (the account's) address
	DailyLimit    int           // messages (and recipients) a rolling day; warn near it
	// Redactor masks the secrets in an upstream reply (a server may echo
	// what it was sent) before it is recorded, logged or passed on.
	Redactor *redact.Redactor
	// Clock is the scheduler's time; nil means the system's.
	Clock Clock
	// Intake takes the failure notices the scheduler writes (with NoticeTo).
	Intake *Intake
}

// Backoff is the delay before retry number attempt (1 for the first retry):
// RetryMin doubling per attempt up to RetryMax, spread by ±20% using r in
// [0,1) so that messages that failed together do not retry together.
func Backoff(attempt int, min, max time.Duration, r float64) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := float64(min) * math.Pow(2, float64(attempt-1))
	if d > float64(max) || math.IsInf(d, 1) {
		d = float64(max)
	}
	return time.Duration(d * (0.8 + 0.4*r))
}
