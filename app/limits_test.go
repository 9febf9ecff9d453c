package app_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func TestDailyLimitWarningsAndCounterSurviveRestart(t *testing.T) {
	e := newEnv(t, "daily_limit = 5\n")
	for i := 0; i < 4; i++ {
		if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("count-%d", i), "x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	e.standin.WaitMessages(4, 10*time.Second)
	waitFor(t, 5*time.Second, func() bool {
		return len(e.logs.lines(map[string]any{"message": "80% of iCloud's daily sending limit used in the last 24 hours"})) == 1
	})
	e.stop()
	e.start()
	send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("count-4", "x\r\n"))
	// 5 of 5 after the restart: the count was kept.
	waitFor(t, 10*time.Second, func() bool {
		return len(e.logs.lines(map[string]any{"message": "100% of iCloud's daily sending limit used in the last 24 hours", "sent_today": 5})) == 1
	})
}

func TestDailyLimitRefusalHoldsTheQueue(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Message rejected: daily sending limit exceeded"}})
	for i := 0; i < 3; i++ {
		reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("limited-%d", i), "x\r\n"))
		if err != nil {
			t.Fatalf("the daily limit is not the message's fault: the client must get 250 queued, got %v", err)
		}
		_ = reply
	}
	time.Sleep(time.Second) // several retry_min periods
	l := e.logs.lines(map[string]any{"message": logging.EvHeld, "class": "hold_daily_limit"})
	if len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["remedy"]), "daily sending limit") || l[0]["next_retry"] == nil {
		t.Fatalf("want one hold line with the daily-limit remedy and resume time, got %v", l)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	if act, _ := q.Active(); len(act) != 3 {
		t.Fatalf("%d queued, want all 3 kept", len(act))
	}
	if f, _ := q.Failed(); len(f) != 0 {
		t.Fatalf("%d failed: the limit must not fail messages", len(f))
	}
}
