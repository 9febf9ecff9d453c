package app_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func TestFullDiskAnswers4xxAndLeavesNothingHalfWritten(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", mnt).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("cannot mount a small tmpfs to fill (needs root): %v %s", err, out))
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

// At the boundary where a message's data still fits but its metadata does
// not (here: one inode left), the client gets 452 "disk full" too, not a
// vague 451. Two inode counts, so that one of them stops exactly there;
// the commit made by the delivery worker (lone messages) and by the
// session (a burst: bulk_gap on).
func TestFullDiskBetweenDataAndMetadataAnswers452(t *testing.T) {
	for _, c := range []struct {
		inodes int
		bulk   time.Duration
	}{{40, 0}, {41, 0}, {40, time.Second}, {41, time.Second}} {
		inodes := c.inodes
		mnt := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=8m,nr_inodes=%d", inodes), "tmpfs", mnt).CombinedOutput(); err != nil {
			testenv.Skip(t, fmt.Sprintf("cannot mount a small tmpfs to fill (needs root): %v %s", err, out))
		}
		// For a burst iCloud is 10 ms away, too slow to wait for.
		var opts upstreamtest.Options
		if c.bulk > 0 {
			opts.Latency = 10 * time.Millisecond
		}
		e := newEnvWith(t, opts, "")
		e.stop()
		// iCloud answers 451: with bulk_gap 0 every message waits its sync
		// window and the delivery worker commits it; with bulk_gap on, all
		// but the first are a burst, which their session commits at once.
		e.standin.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy"}})
		e.cfg.Queue.Dir = filepath.Join(mnt, "queue")
		e.cfg.Delivery.BulkGap = config.Duration(c.bulk)
		e.start()
		var refusal error
		for i := 0; i < 40 && refusal == nil; i++ {
			_, refusal = send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("inode-%d", i), "x\r\n"))
		}
		if se, ok := refusal.(*smtp.SMTPError); !ok || se.Code != 452 {
			t.Fatalf("nr_inodes=%d, bulk_gap %s: out of inodes the client got %v, want 452", inodes, c.bulk, refusal)
		}
		e.stop()
		exec.Command("umount", mnt).Run()
	}
}

// A queue directory that other users can read (made by hand, or by an
// older version) is made owner-only at start, and the log says so.
func TestAnOpenQueueDirectoryIsTightened(t *testing.T) {
	e := newEnv(t, "")
	e.stop()
	e.cfg.Queue.Dir = filepath.Join(t.TempDir(), "queue")
	os.MkdirAll(filepath.Join(e.cfg.Queue.Dir, "active"), 0o755)
	os.Chmod(e.cfg.Queue.Dir, 0o755)
	e.start()
	for _, d := range []string{e.cfg.Queue.Dir, filepath.Join(e.cfg.Queue.Dir, "active")} {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v, want 0700", d, st.Mode(), err)
		}
	}
	if l := e.logs.lines(map[string]any{"message": "queue directory was readable by other users; permissions tightened to 0700"}); len(l) != 2 {
		t.Fatalf("log: %v", l)
	}
}
