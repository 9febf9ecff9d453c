package status

import (
	"strings"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// Each state of the relay gets its banner: the words, the remedy of the
// failure behind it, and what the relay does about it.
func TestEveryStateHasItsBanner(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.Local)
	login := &upstream.Error{Stage: upstream.StageAuth, Code: 535, Text: "bad", Class: upstream.PauseAccount, Remedy: "use an app-specific password"}
	busy := &upstream.Error{Stage: upstream.StageMail, Code: 451, Text: "busy", Class: upstream.Retry, Remedy: "it retries"}
	refused := &upstream.Error{Stage: upstream.StageRcpt, Code: 550, Text: "no such user", Class: upstream.Permanent, Remedy: "check the address"}
	for _, c := range []struct {
		name  string
		h     relay.Health
		state string
		words []string
	}{
		{"nothing sent yet", relay.Health{}, StateOK, []string{"Ready"}},
		{"flowing", relay.Health{LastDelivery: now}, StateOK, []string{"Mail is flowing."}},
		{"a message refused for good is not the relay's trouble", relay.Health{LastDelivery: now, LastError: refused, Queued: 0}, StateOK, []string{"Mail is flowing."}},
		{"failing for now", relay.Health{Failing: now, LastError: busy, Queued: 2, NextTry: now.Add(30 * time.Second)}, StateRetrying,
			[]string{"deliveries fail for now", "it retries", "next try is at 10:00:30"}},
		{"login refused", relay.Health{Hold: upstream.PauseAccount, HoldUntil: now.Add(time.Hour), Failing: now, LastError: login, Queued: 1}, StatePaused,
			[]string{"iCloud refused the login", "app-specific password", "paused until 11:00:00"}},
		{"unreachable", relay.Health{Hold: upstream.Unreachable, Failing: now, LastError: busy, Queued: 1}, StateUnreachable, []string{"cannot be reached", "probe"}},
		{"daily limit", relay.Health{Hold: upstream.HoldDailyLimit, HoldUntil: now.Add(2 * time.Hour), LastError: busy, Queued: 1}, StateHeld, []string{"daily sending limit", "rolls over at 12:00:00"}},
	} {
		r := Build(Input{Health: c.h, Now: now, Port: 587, Ports: [2]int{587, 465}})
		all := strings.Join([]string{r.Headline, r.Remedy, r.Doing}, " | ")
		if r.State != c.state || r.OK != (c.state == StateOK) {
			t.Errorf("%s: state %q ok %v, want %q", c.name, r.State, r.OK, c.state)
		}
		for _, w := range c.words {
			if !strings.Contains(all, w) {
				t.Errorf("%s: %q lacks %q", c.name, all, w)
			}
		}
	}
	// The port: 465 because 587 did not work.
	r := Build(Input{Port: 465, Ports: [2]int{587, 465}, Fallback: now, Now: now})
	if !strings.HasPrefix(r.PortNote, "465, because 587 did not work") {
		t.Errorf("port note %q", r.PortNote)
	}
}

func TestSubjectIsDecoded(t *testing.T) {
	for hdr, want := range map[string]string{
		"From: a@b\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n": "Grüße",
		"Subject: <script>alert(1)</script>\r\n":                "<script>alert(1)</script>",
		"Subject: folded\r\n over two lines\r\n":                "folded over two lines",
		"From: nobody\r\n":                                      "",
	} {
		if got := subject(hdr); got != want {
			t.Errorf("subject(%q) = %q, want %q", hdr, got, want)
		}
	}
}
