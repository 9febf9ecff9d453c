package app_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// Each cause, driven through the relay against the stand-in, is logged
// with its stage, its class and advice for that cause (the no-network
// case runs in a network namespace: cmd/icloud-relay's netns_test.go).
func TestEveryCauseIsExplainedInTheLog(t *testing.T) {
	dailyLimit := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "You have exceeded your daily sending limit. Please try again later."}
	for _, tc := range []struct {
		name   string
		setup  func(s *upstreamtest.Server)
		want   map[string]any // fields of the line that must be there
		remedy string
		not    string
	}{
		{"587 silently dropped, 465 works", func(s *upstreamtest.Server) { s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole) },
			map[string]any{"message": logging.EvPortSwitched, "level": "warn"}, "does not work from this network", ""},
		{"certificate valid for another host", func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{WrongName: true}) },
			map[string]any{"message": logging.EvUnreachable, "stage": "tls", "class": "unreachable"}, "upstream.host is probably wrong", "intercepting"},
		{"daily limit at MAIL", func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{Mail: dailyLimit}) },
			map[string]any{"message": logging.EvHeld, "stage": "mail", "class": "hold_daily_limit"}, "daily sending limit", "aliases"},
		{"daily limit at RCPT", func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": dailyLimit}})
		}, map[string]any{"message": logging.EvHeld, "stage": "rcpt", "class": "hold_daily_limit"}, "daily sending limit", "typos"},
		{"a recipient refused for good is named", func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}})
		}, map[string]any{"message": logging.EvRecipientRefused, "to": "friend@example.com", "class": "permanent"}, "check the address for typos", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, `sync_window = "0s"`)
			tc.setup(e.standin)
			if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("cause", "x\r\n")); err != nil {
				t.Fatal(err)
			}
			var l []map[string]any
			waitFor(t, 15*time.Second, func() bool { l = e.logs.lines(tc.want); return len(l) > 0 })
			remedy := fmt.Sprint(l[0]["remedy"])
			if !strings.Contains(remedy, tc.remedy) || (tc.not != "" && strings.Contains(remedy, tc.not)) {
				t.Fatalf("remedy %q: want %q, and not %q", remedy, tc.remedy, tc.not)
			}
		})
	}
}

// The lines about a message say which message: queue ID, Message-ID,
// sender and recipients; the delivered line also the port and the time
// taken in milliseconds.
func TestMessageLinesNameTheMessage(t *testing.T) {
	e := newEnv(t, "")
	if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com", "other@example.com"},
		"Subject: s\r\nMessage-ID: <trace-me@example.com>\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return len(e.logs.lines(map[string]any{"message": logging.EvDelivered})) == 1 })
	for _, ev := range []string{logging.EvAccepted, logging.EvDelivered} {
		l := e.logs.lines(map[string]any{"message": ev})[0]
		if l["queue_id"] == nil || l["message_id"] != "<trace-me@example.com>" || l["from"] != "demo@icloud.com" ||
			fmt.Sprint(l["to"]) != "[friend@example.com other@example.com]" {
			t.Errorf("%s: %v", ev, l)
		}
	}
	l := e.logs.lines(map[string]any{"message": logging.EvDelivered})[0]
	if l["port"] != float64(e.standin.StartTLSPort) || l["took_ms"] == nil {
		t.Errorf("delivered: %v", l)
	}
}
