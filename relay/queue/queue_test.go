package queue

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newMsg() *Message {
	return &Message{From: "me@icloud.com", Rcpts: []Recipient{{Addr: "a@example.com", Status: Pending}, {Addr: "b@example.com", Status: Pending}}}
}

func mustOpen(t *testing.T, dir string) *Queue {
	t.Helper()
	q, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestEnqueueSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	body := "Subject: hi\r\n\r\nbody\r\n"
	m := newMsg()
	if err := q.Enqueue(m, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if m.ID == "" || m.Size != int64(len(body)) || !ValidID(m.ID) {
		t.Fatalf("bad message %+v", m)
	}
	q2 := mustOpen(t, dir)
	rep, err := q2.Recover()
	if err != nil || rep.TempRemoved+rep.OrphansRemoved+len(rep.Quarantined) != 0 {
		t.Fatalf("clean queue recovered as %+v, %v", rep, err)
	}
	list, err := q2.Active()
	if err != nil || len(list) != 1 || list[0].ID != m.ID || len(list[0].Pending()) != 2 {
		t.Fatalf("Active = %+v, %v", list, err)
	}
	f, err := q2.Body(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if string(got) != body {
		t.Fatalf("body %q", got)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errors.New("client vanished")
	}
	r.n--
	return copy(p, "partial data "), nil
}

func TestFailedEnqueueLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	err := q.Enqueue(newMsg(), &failingReader{n: 3})
	if err == nil {
		t.Fatal("want error")
	}
	for _, sub := range []string{"tmp", "active", "failed"} {
		if e, _ := os.ReadDir(filepath.Join(dir, sub)); len(e) != 0 {
			t.Errorf("%s not empty after failed enqueue: %v", sub, e)
		}
	}
}

func TestEnqueueIntoBrokenDirFails(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	os.RemoveAll(filepath.Join(dir, "tmp"))
	os.WriteFile(filepath.Join(dir, "tmp"), nil, 0o600) // a file where the directory was
	var qe *Error
	if err := q.Enqueue(newMsg(), strings.NewReader("x")); !errors.As(err, &qe) {
		t.Fatalf("want *queue.Error, got %v", err)
	}
}

func TestDeleteAndFail(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	a, b := newMsg(), newMsg()
	q.Enqueue(a, strings.NewReader("a"))
	q.Enqueue(b, strings.NewReader("b"))
	if err := q.Delete(a.ID); err != nil {
		t.Fatal(err)
	}
	if err := q.Fail(b, Outcome{Stage: "rcpt", Code: 550, Text: "no such user"}); err != nil {
		t.Fatal(err)
	}
	if act, _ := q.Active(); len(act) != 0 {
		t.Fatalf("active: %v", act)
	}
	failed, _ := q.Failed()
	if len(failed) != 1 || failed[0].Final.Code != 550 {
		t.Fatalf("failed: %+v", failed)
	}
	if _, err := os.Stat(filepath.Join(dir, "failed", b.ID+".eml")); err != nil {
		t.Fatal("failed message data missing")
	}
}

func TestRecoverAfterCrashDebris(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	good, trunc, nodata, failing := newMsg(), newMsg(), newMsg(), newMsg()
	for _, m := range []*Message{good, trunc, nodata, failing} {
		if err := q.Enqueue(m, strings.NewReader("Subject: x\r\n\r\nhello\r\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	active := filepath.Join(dir, "active")
	os.WriteFile(filepath.Join(dir, "tmp", "half-written.eml"), []byte("par"), 0o600)
	os.WriteFile(filepath.Join(active, "20260101T000000-orphan.eml"), []byte("never committed"), 0o600)
	os.WriteFile(filepath.Join(active, "20260101T000000-badjson.json"), []byte("{not json"), 0o600)
	os.WriteFile(filepath.Join(active, "20260101T000000-badjson.eml"), []byte("data"), 0o600)
	os.WriteFile(filepath.Join(active, "20260101T000000-future.json"), []byte(`{"version":99,"id":"20260101T000000-future"}`), 0o600)
	os.Truncate(filepath.Join(active, trunc.ID+".eml"), 3)
	os.Remove(filepath.Join(active, nodata.ID+".eml"))
	// A move to failed/ interrupted after the data moved.
	os.Rename(filepath.Join(active, failing.ID+".eml"), filepath.Join(dir, "failed", failing.ID+".eml"))

	q2 := mustOpen(t, dir)
	rep, err := q2.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if rep.TempRemoved != 1 || rep.OrphansRemoved != 1 || rep.FailsFinished != 1 || len(rep.Quarantined) != 4 {
		t.Fatalf("recovery %+v", rep)
	}
	act, _ := q2.Active()
	if len(act) != 1 || act[0].ID != good.ID {
		t.Fatalf("active after recovery: %+v", act)
	}
	failed, _ := q2.Failed()
	reasons := map[string]string{}
	for _, m := range failed {
		reasons[m.ID] = m.Final.Text
	}
	if !strings.Contains(reasons[trunc.ID], "truncated") || !strings.Contains(reasons[nodata.ID], "missing") || reasons[failing.ID] == "" {
		t.Fatalf("failed reasons: %v", reasons)
	}
	for _, bad := range []string{"20260101T000000-badjson.json.bad", "20260101T000000-future.json.bad", "20260101T000000-badjson.eml"} {
		if _, err := os.Stat(filepath.Join(dir, "failed", bad)); err != nil {
			t.Errorf("%s not quarantined: %v", bad, err)
		}
	}
	// A second recovery finds nothing to do.
	rep, _ = mustOpen(t, dir).Recover()
	if rep.TempRemoved+rep.OrphansRemoved+rep.FailsFinished+len(rep.Quarantined) != 0 {
		t.Fatalf("second recovery %+v", rep)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	m := newMsg()
	for i := 0; i < 50; i++ {
		m.Record(Outcome{Text: string(rune('a' + i%26))})
	}
	if len(m.History) != maxHistory || m.LastError().Text != string(rune('a'+49%26)) {
		t.Fatalf("history %d, last %+v", len(m.History), m.LastError())
	}
}

func TestValidID(t *testing.T) {
	for id, ok := range map[string]bool{"20261122T011613-abc": true, "../etc/passwd": false, "": false, "a/b": false, ".hidden": false} {
		if ValidID(id) != ok {
			t.Errorf("ValidID(%q) != %v", id, ok)
		}
	}
}

func TestLargeMessageStreams(t *testing.T) {
	q := mustOpen(t, t.TempDir())
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	m := newMsg()
	if err := q.Enqueue(m, bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	if m.Size != int64(len(big)) {
		t.Fatalf("size %d", m.Size)
	}
	f, err := q.Body(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("the stored data differs from what was sent (%d bytes read, %v)", len(got), err)
	}
}

// A staged message is not a message until committed: a restart forgets
// it (its data held in memory) or removes its data file; Commit makes it
// one; Discard leaves nothing.
func TestStagedMessageLifecycle(t *testing.T) {
	dir := t.TempDir()
	q := mustOpen(t, dir)
	body := "Subject: staged\r\n\r\nbody\r\n"
	big := "Subject: staged\r\n\r\n" + strings.Repeat("x", memMessage) + "\r\n"

	for _, b := range []string{body, big} {
		lost := newMsg()
		lostStaged, err := q.Stage(lost, strings.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if r, err := lostStaged.Open(); err != nil {
			t.Fatalf("a staged message's data is readable for delivery: %v", err)
		} else if got, _ := io.ReadAll(r); string(got) != b {
			t.Fatalf("a staged message reads as %d bytes, want the %d staged", len(got), len(b))
		} else {
			r.Close()
		}
		if active, _ := q.Active(); len(active) != 0 {
			t.Fatalf("staged message listed as queued: %v", active)
		}
		// Restart (the process died before committing): nothing remains. A
		// dead process holds no handle (Windows cannot remove an open file).
		if lostStaged.f != nil {
			lostStaged.f.Close()
		}
		rep, err := mustOpen(t, dir).Recover()
		if want := len(b) / (memMessage + 1); err != nil || rep.OrphansRemoved != want {
			t.Fatalf("recover after a %d-byte message was staged: %+v %v, want %d orphan removed", len(b), rep, err, want)
		}
		if lostStaged.path == "" {
			q.Discard(lostStaged) // the dead process's memory
		}
	}

	kept := newMsg()
	st, err := q.Stage(kept, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	snapshot := kept.Clone()
	kept.Attempts = 5 // the live copy may move on; the snapshot is what is committed
	if err := q.Commit(st, snapshot); err != nil {
		t.Fatal(err)
	}
	got, err := q.Get(kept.ID)
	if err != nil || got.Attempts != 0 || got.Size != int64(len(body)) || len(got.Rcpts) != 2 {
		t.Fatalf("committed: %+v %v", got, err)
	}

	for _, b := range []string{body, big} {
		gone := newMsg()
		st, err = q.Stage(gone, strings.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Discard(st); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "active"))
	if len(entries) != 2 { // kept's .eml and .json
		t.Fatalf("active/ holds %d entries, want kept's two", len(entries))
	}
	if used := q.mem.used.Load(); used != 0 {
		t.Fatalf("%d bytes of the memory budget still held with nothing staged", used)
	}
}

// The staged data held in memory is bounded in all: past memBudget, more
// staged messages go to files, and settling them gives the budget back.
func TestStagedDataInMemoryIsBounded(t *testing.T) {
	q := mustOpen(t, t.TempDir())
	body := strings.Repeat("x", memMessage)
	var sts []*Staged
	inMemory := 0
	for range 2 * memBudget / memMessage {
		st, err := q.Stage(newMsg(), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if st.path == "" {
			inMemory++
		}
		sts = append(sts, st)
	}
	if inMemory != memBudget/memMessage {
		t.Fatalf("%d messages of %d bytes held in memory, want %d (the budget)", inMemory, memMessage, memBudget/memMessage)
	}
	for i, st := range sts {
		if i%2 == 0 {
			q.Discard(st)
		} else if err := q.Commit(st, newMsg()); err != nil {
			t.Fatal(err)
		}
	}
	if used := q.mem.used.Load(); used != 0 {
		t.Fatalf("%d bytes of the memory budget still held after every message was settled", used)
	}
}
