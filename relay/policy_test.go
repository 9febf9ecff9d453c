package relay

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	min, max := 30*time.Second, time.Hour
	cases := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0.5, 30 * time.Second}, // treated as the first
		{1, 0.5, 30 * time.Second},
		{2, 0.5, 60 * time.Second},
		{3, 0.5, 120 * time.Second},
		{1, 0, 24 * time.Second}, // -20%
		{1, 1, 36 * time.Second}, // +20% (r is below 1 in use)
		{7, 0.5, 32 * time.Minute},
		{8, 0.5, time.Hour}, // capped
		{500, 0.5, time.Hour},
		{100000, 0.5, time.Hour}, // no overflow
		{8, 0, 48 * time.Minute}, // jitter applies to the cap too
	}
	for _, c := range cases {
		if got := Backoff(c.attempt, min, max, c.r); got != c.want {
			t.Errorf("Backoff(%d, r=%v) = %v, want %v", c.attempt, c.r, got, c.want)
		}
	}
}
