package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// The default tells a person from a script: a lone message waits for
// iCloud's verdict, so a refusal reaches the one who sent it; a message
// sent right after another (bulk_gap, 1 s) is answered as soon as it is on
// disk (iCloud being slower than that), and its refusal goes to the failed
// area and the notice. After a pause, the next message is a lone one again.
func TestABurstIsAnsweredOnDiskALoneMessageWaits(t *testing.T) {
	e := newEnv(t, "notify_failures = true\nbulk_gap = \"1s\"\n")
	refused := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	// iCloud across a network: slower to answer than a commit to disk.
	e.standin.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"nobody@example.com": refused}, Delay: 50 * time.Millisecond})
	_, err := send(e.addr(), "demo@icloud.com", []string{"nobody@example.com"}, message("lone", "x\r\n"))
	if err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("a lone message: %v, want iCloud's 550", err)
	}
	reply, err := send(e.addr(), "demo@icloud.com", []string{"nobody@example.com"}, message("burst", "x\r\n"))
	if err != nil || !strings.Contains(reply, "Queued as") {
		t.Fatalf("the next one right after: %q %v, want queued at once", reply, err)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	waitFor(t, 10*time.Second, func() bool {
		f, _ := q.Failed()
		return len(f) >= 2
	})
	notices := 0
	for _, m := range e.standin.WaitMessages(2, 10*time.Second) {
		if strings.Contains(string(m.Data), "Subject: Undelivered: ") {
			notices++
		}
	}
	if notices != 2 {
		t.Fatalf("%d failure notices, want one for each refused message", notices)
	}
	time.Sleep(1200 * time.Millisecond) // longer than bulk_gap: the next is a lone message
	if _, err := send(e.addr(), "demo@icloud.com", []string{"nobody@example.com"}, message("lone again", "x\r\n")); err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("after a pause: %v, want iCloud's 550", err)
	}
}
