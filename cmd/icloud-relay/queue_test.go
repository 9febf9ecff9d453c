package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

type jsonEntry struct {
	ID        string
	From      string
	Attempts  int
	Rcpts     []struct{ Addr, Status string }
	LastError *struct {
		Stage string
		Text  string
	} `json:"last_error"`
	NextRetry *time.Time `json:"next_retry"`
	HeldBy    string     `json:"held_by"`
	Final     *struct {
		Stage string
		Code  int `json:"smtp_code"`
		Text  string
	}
	Headers string
	History []struct{ Stage, Text string }
}

func runCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	out, _ := cmd.CombinedOutput()
	if strings.Contains(string(out), "DATA RACE") {
		t.Fatalf("race detected in %v:\n%s", args, out)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func queueJSON(t *testing.T, cfg string, args ...string) []jsonEntry {
	t.Helper()
	code, out := runCLI(t, append(append([]string{"queue"}, args...), "--config", cfg, "--json")...)
	if code != 0 {
		t.Fatalf("queue %v: exit %d\n%s", args, code, out)
	}
	var entries []jsonEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("queue %v --json: %v\n%s", args, err, out)
	}
	return entries
}

func TestQueueCommandsWhileTheRelayRuns(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	cfg := writeConfig(t, s, dir, s.Password())
	p := startProc(t, "run", "--config", cfg)
	addr := p.waitLog(t, "listening for local mail clients")["addr"].(string)

	// One failed message: a recipient refused for good.
	s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}})
	if err := sendTo(addr, "will-fail"); err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("want the 550 passed to the client, got %v", err)
	}
	// Queued, retrying messages: 4xx at DATA.
	s.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}})
	for i := 0; i < 3; i++ {
		if err := sendTo(addr, fmt.Sprintf("retrying-%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	failed := queueJSON(t, cfg, "failed")
	if len(failed) != 1 || failed[0].Final == nil || failed[0].Final.Code != 550 || failed[0].Final.Stage != "rcpt" {
		t.Fatalf("failed: %+v", failed)
	}
	queued := queueJSON(t, cfg, "list")
	if len(queued) != 3 {
		t.Fatalf("list: %+v", queued)
	}
	for _, e := range queued {
		if e.Attempts < 1 || e.LastError == nil || e.LastError.Stage != "data" || e.NextRetry == nil {
			t.Fatalf("list entry lacks attempt data: %+v", e)
		}
	}
	// show, text and JSON
	code, out := runCLI(t, "queue", "show", queued[0].ID, "--config", cfg)
	if code != 0 || !strings.Contains(out, "Subject: retrying-") || !strings.Contains(out, "data (451 4.3.0) [retry: temporary: this message is tried again later]: try later") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}
	var shown jsonEntry
	_, out = runCLI(t, "queue", "show", "--config", cfg, "--json", failed[0].ID)
	if err := json.Unmarshal([]byte(out), &shown); err != nil || len(shown.History) == 0 || !strings.Contains(shown.Headers, "Subject: will-fail") {
		t.Fatalf("show --json: %v\n%s", err, out)
	}

	// Deliveries run while the commands do (the relay binary has the race detector).
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sendTo(addr, fmt.Sprintf("concurrent-%d", i))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if code, out := runCLI(t, "queue", "delete", queued[0].ID, "--config", cfg); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: exit %d %s", code, out)
	}
	if code, out := runCLI(t, "queue", "delete", "20991231T000000-nosuchid", "--config", cfg); code != 2 || !strings.Contains(out, "no such message") {
		t.Fatalf("delete of an unknown ID: exit %d %s", code, out)
	}
	s.SetFaults(upstreamtest.Faults{})
	if code, out := runCLI(t, "queue", "retry", "--all", "--config", cfg); code != 0 {
		t.Fatalf("retry --all: exit %d %s", code, out)
	}
	if code, out := runCLI(t, "queue", "requeue", failed[0].ID, "--config", cfg); code != 0 {
		t.Fatalf("requeue: exit %d %s", code, out)
	}
	close(stop)
	wg.Wait()

	// Everything but the deleted message arrives exactly once.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && len(queueJSON(t, cfg, "list")) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	if left := queueJSON(t, cfg, "list"); len(left) != 0 {
		t.Fatalf("still queued: %+v", left)
	}
	subjects := map[string]int{}
	for _, m := range s.Messages() {
		subjects[m.Subject()]++
	}
	for subj, n := range subjects {
		if n != 1 {
			t.Errorf("%s delivered %d times", subj, n)
		}
	}
	if subjects["will-fail"] != 1 || len(failedIDs(t, cfg)) != 0 {
		t.Fatalf("requeued message: %v", subjects)
	}
	if got := subjects["retrying-0"] + subjects["retrying-1"] + subjects["retrying-2"]; got != 2 {
		t.Fatalf("want the two undeleted retrying messages delivered, got %d: %v", got, subjects)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if strings.Contains(p.output(), "DATA RACE") {
		t.Fatalf("race in the relay:\n%s", p.output())
	}
}

func failedIDs(t *testing.T, cfg string) []string {
	var ids []string
	for _, e := range queueJSON(t, cfg, "failed") {
		ids = append(ids, e.ID)
	}
	return ids
}

func TestQueueCommandsWithoutARunningRelay(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), listen, "")
	// sendmail with no relay running queues the message itself.
	for i := 0; i < 2; i++ {
		cmd := exec.Command(binary, "sendmail", "--config", cfg, "-i", "friend@example.com")
		cmd.Stdin = strings.NewReader(fmt.Sprintf("Subject: offline-%d\n\nqueued while the relay was down\n", i))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "queued as") {
			t.Fatalf("offline sendmail: %v\n%s", err, out)
		}
	}
	list := queueJSON(t, cfg, "list")
	if len(list) != 2 {
		t.Fatalf("list: %+v", list)
	}
	if code, out := runCLI(t, "queue", "delete", list[0].ID, "--config", cfg); code != 0 {
		t.Fatalf("offline delete: %d %s", code, out)
	}
	if code, out := runCLI(t, "queue", "retry", list[1].ID, "--config", cfg); code != 0 {
		t.Fatalf("offline retry: %d %s", code, out)
	}
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	got := s.WaitMessages(1, 20*time.Second)
	if len(got) != 1 || !strings.Contains(string(got[0].Data), "Subject: offline-1\r\n") {
		t.Fatalf("after start: %+v", got)
	}
	// While the relay runs, a second relay on the same queue is refused.
	code, out := runCLI(t, "run", "--config", cfg)
	if code != 1 || !strings.Contains(out, "already uses the queue") {
		t.Fatalf("second relay: exit %d\n%s", code, out)
	}
}

// While a refused login pauses every delivery, queue list says the
// message is held and when it goes, not "now".
func TestQueueListShowsAHold(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	s.SetFaults(upstreamtest.Faults{AuthFail: true})
	cfg := writeConfig(t, s, t.TempDir(), s.Password())
	p := startProc(t, "run", "--config", cfg)
	addr := p.waitLog(t, "listening for local mail clients")["addr"].(string)
	if err := sendTo(addr, "held"); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, logging.EvPaused)
	entries := queueJSON(t, cfg, "list")
	if len(entries) != 1 || entries[0].HeldBy != "pause_account" || entries[0].NextRetry == nil || time.Until(*entries[0].NextRetry) < 30*time.Minute {
		t.Fatalf("list --json: %+v, want held by pause_account until the pause ends", entries)
	}
	if code, out := runCLI(t, "queue", "list", "--config", cfg); code != 0 || !strings.Contains(out, "held (login refused), in ") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
}
