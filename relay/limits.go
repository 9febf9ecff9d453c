package relay

import (
	"encoding/json"
	"sort"
	"time"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// iCloud allows about 1,000 messages and 1,000 recipients a day. The relay
// counts what it sent over a rolling day, in ten-minute buckets kept beside
// the queue (so restarts keep the count), warns as the count nears the
// limit, and when iCloud refuses for the limit, waits for the window to
// free up instead of burning every message's retries.
const (
	bucket    = 10 * time.Minute
	day       = 24 * time.Hour
	stateFile = "sent.json"
)

type sendCounter struct {
	Buckets map[int64][2]int `json:"buckets"` // bucket start (unix) → messages, recipients
	warned  int              // the highest warning level already logged
	savedAt time.Time        // last write to disk
	dirty   bool
}

// saveEvery bounds how often the counter is written: it is advice, not
// mail, and two fsyncs per delivered message would halve the throughput.
// A crash loses at most this much counting.
const saveEvery = 10 * time.Second

func (c *sendCounter) prune(now time.Time) {
	for k := range c.Buckets {
		if time.Unix(k, 0).Add(day).Before(now) {
			delete(c.Buckets, k)
		}
	}
}

func (c *sendCounter) add(now time.Time, rcpts int) {
	if c.Buckets == nil {
		c.Buckets = map[int64][2]int{}
	}
	c.prune(now)
	k := now.Truncate(bucket).Unix()
	b := c.Buckets[k]
	b[0]++
	b[1] += rcpts
	c.Buckets[k] = b
}

func (c *sendCounter) totals(now time.Time) (msgs, rcpts int) {
	c.prune(now)
	for _, b := range c.Buckets {
		msgs += b[0]
		rcpts += b[1]
	}
	return msgs, rcpts
}

// frees returns when the oldest counted sending leaves the rolling day.
func (c *sendCounter) frees(now time.Time) time.Time {
	c.prune(now)
	keys := make([]int64, 0, len(c.Buckets))
	for k := range c.Buckets {
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return now.Add(time.Hour)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return time.Unix(keys[0], 0).Add(day + bucket)
}

func (s *Scheduler) loadCounter() {
	b, err := s.q.LoadState(stateFile)
	if err == nil && b != nil {
		json.Unmarshal(b, &s.sent)
	}
}

// countSent records a delivered message and warns near the limit.
func (s *Scheduler) countSent(rcpts int) {
	s.mu.Lock()
	now := s.clock.Now()
	s.sent.add(now, rcpts)
	s.sent.dirty = true
	msgs, total := s.sent.totals(now)
	level := 0
	if limit := s.pol.DailyLimit; limit > 0 {
		for _, pct := range []int{80, 95, 100} {
			if msgs*100 >= limit*pct || total*100 >= limit*pct {
				level = pct
			}
		}
	}
	warn := level > s.sent.warned
	if warn {
		s.sent.warned = level
	}
	save := warn || now.Sub(s.sent.savedAt) >= saveEvery
	s.mu.Unlock()
	if save {
		s.saveCounter()
	}
	if warn {
		s.log.Warn().Int("sent_today", msgs).Int("recipients_today", total).Int("daily_limit", s.pol.DailyLimit).
			Str("remedy", "iCloud allows about 1,000 messages and 1,000 recipients a day; beyond that it refuses mail until the day rolls over. Spread large mailings over several days.").
			Msgf("%d%% of iCloud's daily sending limit used in the last 24 hours", level)
	}
}

// saveCounter writes the sending counter if it changed since the last write.
func (s *Scheduler) saveCounter() {
	s.mu.Lock()
	if !s.sent.dirty {
		s.mu.Unlock()
		return
	}
	b, _ := json.Marshal(&s.sent)
	s.sent.dirty, s.sent.savedAt = false, s.clock.Now()
	s.mu.Unlock()
	if err := s.q.SaveState(stateFile, b); err != nil {
		s.log.Warn().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, logging.RemedyQueueDir).Msg("cannot save the sending counter")
	}
}

// dailyLimitPause pauses deliveries until the rolling day frees up.
func (s *Scheduler) dailyLimitPause(e *upstream.Error) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if now.Before(s.pausedUntil) {
		return s.pausedUntil
	}
	s.pausedUntil, s.pausedFor = s.sent.frees(now), upstream.HoldDailyLimit
	msgs, rcpts := s.sent.totals(now)
	logging.Held(s.log, e, s.pausedUntil, msgs, rcpts)
	return s.pausedUntil
}
