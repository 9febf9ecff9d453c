package relay

import (
	"fmt"
	"net/netip"
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

// Failed logins count per IPv6 /64 (one host can use many of its
// addresses) and, from other machines, in all.
func TestLoginFailuresCountPerPrefixAndInAll(t *testing.T) {
	l := newLoginLimits()
	now := time.Now()
	for i := 0; i < maxAuthFailures; i++ {
		a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if l.blocked(clientKey(a), false, now) > 0 {
			t.Fatalf("blocked after %d failures", i)
		}
		l.failed(clientKey(a), false, now)
	}
	if l.blocked(clientKey(netip.MustParseAddr("2001:db8:1:2::ffff")), false, now) == 0 {
		t.Fatal("another address of the same /64 may keep guessing")
	}
	if l.blocked(clientKey(netip.MustParseAddr("2001:db8:1:3::1")), false, now) > 0 {
		t.Fatal("another /64 is blocked too early")
	}
	for i := 0; l.remote.count < maxGlobalAuthFailures; i++ {
		l.failed(clientKey(netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i%250+1))), false, now)
	}
	if l.blocked(clientKey(netip.MustParseAddr("198.51.100.7")), false, now) == 0 {
		t.Fatal("past the global cap a fresh address may still guess")
	}
	if l.blocked(clientKey(netip.MustParseAddr("127.0.0.1")), true, now) > 0 {
		t.Fatal("this machine is locked out by other machines' failures")
	}
	if l.blocked(clientKey(netip.MustParseAddr("198.51.100.7")), false, now.Add(authFailureWindow+time.Second)) > 0 {
		t.Fatal("the block outlasts its window")
	}
}
