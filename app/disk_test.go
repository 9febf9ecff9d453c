package app_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func TestFullDiskAnswers4xxAndLeavesNothingHalfWritten(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	e := newEnv(t, "")
	e.stop()
	e.standin.SetPort(e.standin.StartTLSPort, upstreamtest.PortRefused) // keep everything queued
	e.standin.SetPort(e.standin.TLSPort, upstreamtest.PortRefused)
	e.cfg.Queue.Dir = filepath.Join(mnt, "queue")
	e.start()
	body := message("fill", strings.Repeat(strings.Repeat("z", 998)+"\r\n", 100)) // ~100 KB
	var refusal *smtp.SMTPError
	for i := 0; i < 20 && refusal == nil; i++ {
		_, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, body)
		if err != nil {
			se, ok := err.(*smtp.SMTPError)
			if !ok || se.Code/100 != 4 {
				t.Fatalf("a full disk must give a temporary 4xx, got %v", err)
			}
			refusal = se
		}
	}
	if refusal == nil || refusal.Code != 452 {
		t.Fatalf("want 452 once the disk is full, got %v", refusal)
	}
	if l := e.logs.lines(map[string]any{"stage": "queue", "level": "error"}); len(l) == 0 {
		t.Fatal("no stage=queue log line")
	}
	// Every message on disk is whole: metadata and data, sizes matching.
	q, _ := queue.Open(e.cfg.Queue.Dir)
	rep, err := q.Recover()
	if err != nil || rep.OrphansRemoved != 0 || len(rep.Quarantined) != 0 {
		t.Fatalf("half-written files after a full disk: %+v %v", rep, err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(e.cfg.Queue.Dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

func TestCorruptQueueEntriesAreQuarantinedAndTheRestDelivered(t *testing.T) {
	e := newEnv(t, "")
	e.stop()
	q, _ := queue.Open(e.cfg.Queue.Dir)
	good := &queue.Message{From: "demo@icloud.com", Rcpts: []queue.Recipient{{Addr: "friend@example.com", Status: queue.Pending}}}
	trunc := &queue.Message{From: "demo@icloud.com", Rcpts: []queue.Recipient{{Addr: "friend@example.com", Status: queue.Pending}}}
	q.Enqueue(good, strings.NewReader(message("good", "x\r\n")))
	q.Enqueue(trunc, strings.NewReader(message("truncated", "x\r\n")))
	active := filepath.Join(e.cfg.Queue.Dir, "active")
	os.Truncate(filepath.Join(active, trunc.ID+".eml"), 10)
	os.WriteFile(filepath.Join(active, "20260101T000000-garbage.json"), []byte("\x00\x01 not json"), 0o600)
	os.WriteFile(filepath.Join(active, "20260101T000000-future.json"), []byte(`{"version":7,"id":"20260101T000000-future"}`), 0o600)
	e.start()
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 || got[0].Subject() != "good" {
		t.Fatalf("got %+v", got)
	}
	if l := e.logs.lines(map[string]any{"message": "damaged queue entry quarantined"}); len(l) != 3 {
		t.Fatalf("want 3 quarantine lines, got %d", len(l))
	}
	failed, _ := q.Failed()
	if len(failed) != 1 || failed[0].ID != trunc.ID || !strings.Contains(failed[0].Final.Text, "truncated") {
		t.Fatalf("failed area: %+v", failed)
	}
}
