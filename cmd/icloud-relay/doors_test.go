package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// Every door into the queue applies the same rules: the same input queues
// the same bytes and envelope whether sendmail hands it to the running
// relay's listener or, with no relay running, takes it into the queue
// itself. (The Received header's id and time, and a Date or Message-ID
// the relay adds, differ by nature and are set aside.)
func TestEveryDoorQueuesTheSameMessage(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused) // everything stays queued
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	dir := t.TempDir()
	cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "")
	inputs := []struct {
		name string
		args []string
		data string
	}{
		{"foreign sender", []string{"-f", "stranger@example.com", "friend@example.com"},
			"From: Stranger <stranger@example.com>\nTo: friend@example.com\nSubject: foreign sender\nDate: Sun, 22 Nov 2026 01:00:00 +0000\nMessage-ID: <door@test>\n\nx\n"},
		{"bare LF, no Date or Message-ID", []string{"-t"}, "To: friend@example.com\nFrom: demo@icloud.com\nSubject: bare LF\n\nline\n..two dots\nend\n"},
		{"a long line", []string{"-t"}, "To: friend@example.com\nFrom: demo@icloud.com\nSubject: a long line\nDate: Sun, 22 Nov 2026 01:00:00 +0000\nMessage-ID: <long@test>\n\n" + strings.Repeat("word ", 400) + "\n"},
	}
	submit := func(door string) {
		for _, in := range inputs {
			cmd := exec.Command(binary, append([]string{"sendmail", "--config", cfg, "-i"}, in.args...)...)
			cmd.Stdin = strings.NewReader(in.data)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s, %s: %v\n%s", door, in.name, err, out)
			}
		}
	}
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	submit("through the listener")
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	submit("offline")

	type queued struct {
		From  string
		Rcpts []struct{ Addr string }
		data  string
	}
	bySubject := map[string][]queued{}
	metas, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.json"))
	added := regexp.MustCompile(`(?m)^(Received: .*\r\n(\t.*\r\n)*|Date: .*\r\n|Message-ID: .*\r\n)`)
	for _, meta := range metas {
		var q queued
		b, _ := os.ReadFile(meta)
		json.Unmarshal(b, &q)
		data, _ := os.ReadFile(strings.TrimSuffix(meta, ".json") + ".eml")
		q.data = string(data)
		subject := regexp.MustCompile(`(?m)^Subject: (.*)\r$`).FindStringSubmatch(q.data)
		if subject == nil {
			t.Fatalf("no subject in %s", q.data)
		}
		if !strings.Contains(q.data, "\r\nMessage-ID: ") || !strings.Contains(q.data, "\r\nDate: ") || !strings.HasPrefix(q.data, "Received: ") {
			t.Errorf("%s: the fix-ups are missing:\n%s", subject[1], q.data)
		}
		q.data = added.ReplaceAllString(q.data, "")
		bySubject[subject[1]] = append(bySubject[subject[1]], q)
	}
	if len(bySubject) != len(inputs) {
		t.Fatalf("queued: %v", bySubject)
	}
	for subject, qs := range bySubject {
		if len(qs) != 2 {
			t.Fatalf("%s queued %d times, want once per door", subject, len(qs))
		}
		a, b := qs[0], qs[1]
		if a.From != b.From || len(a.Rcpts) != len(b.Rcpts) || a.data != b.data {
			t.Errorf("%s differs by door:\n%+v\n%q\n--\n%+v\n%q", subject, a, a.data, b, b.data)
		}
		if subject == "foreign sender" && (a.From != "demo@icloud.com" || !strings.Contains(a.data, "Reply-To: Stranger <stranger@example.com>")) {
			t.Errorf("the foreign sender was not rewritten: %+v\n%s", a, a.data)
		}
	}
}
