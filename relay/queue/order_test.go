package queue

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingFS is the real file system with a log of every step the
// queue's durability rests on, named by where each file is at that moment
// (a file renamed after it was opened is named by its new place).
type recordingFS struct {
	dir string
	mu  sync.Mutex
	log []string
	at  map[*recordedFile]string
	// beforeSync, when set, runs at the start of every file's Sync with
	// the file's place; an error from it fails the Sync.
	beforeSync func(at string) error
}

type recordedFile struct {
	file
	fs *recordingFS
}

func (r *recordingFS) add(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recordingFS) rel(path string) string {
	if rel, err := filepath.Rel(r.dir, path); err == nil {
		return filepath.ToSlash(rel)
	}
	return path
}

func (r *recordingFS) OpenFile(name string, flag int, perm fs.FileMode) (file, error) {
	f, err := osFS{}.OpenFile(name, flag, perm)
	return r.wrap(f, err, name)
}

func (r *recordingFS) CreateTemp(dir, pattern string) (file, error) {
	f, err := osFS{}.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return r.wrap(f, err, f.Name())
}

func (r *recordingFS) wrap(f file, err error, name string) (file, error) {
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rf := &recordedFile{file: f, fs: r}
	r.at[rf] = r.rel(name)
	r.add("create %s", r.at[rf])
	return rf, nil
}

func (r *recordingFS) Rename(oldpath, newpath string) error {
	err := osFS{}.Rename(oldpath, newpath)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		for f, at := range r.at {
			if at == r.rel(oldpath) {
				r.at[f] = r.rel(newpath)
			}
		}
		r.add("rename %s %s", r.rel(oldpath), r.rel(newpath))
	}
	return err
}

func (r *recordingFS) Remove(name string) error {
	err := osFS{}.Remove(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.add("remove %s", r.rel(name))
	}
	return err
}

func (r *recordingFS) SyncDir(dir string) error {
	r.mu.Lock()
	r.add("syncdir %s", r.rel(dir))
	r.mu.Unlock()
	return osFS{}.SyncDir(dir)
}

func (f *recordedFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	f.fs.add("write %s", f.fs.at[f])
	f.fs.mu.Unlock()
	return f.file.Write(p)
}

// Sync is logged when it returns: what the order rests on is that a file
// is on disk before the next step, and the queue syncs data and metadata
// at once.
func (f *recordedFile) Sync() error {
	f.fs.mu.Lock()
	at, before := f.fs.at[f], f.fs.beforeSync
	f.fs.mu.Unlock()
	if before != nil {
		if err := before(at); err != nil {
			return err
		}
	}
	err := f.file.Sync()
	f.fs.mu.Lock()
	f.fs.add("sync %s", f.fs.at[f])
	f.fs.mu.Unlock()
	return err
}

// recorded opens a queue in a new directory with a recording file system.
func recorded(t *testing.T) (*Queue, *recordingFS) {
	t.Helper()
	dir := t.TempDir()
	q := mustOpen(t, dir)
	r := &recordingFS{dir: dir, at: map[*recordedFile]string{}}
	q.fs = r
	return q, r
}

// stepsSoFar returns the log so far.
func (r *recordingFS) stepsSoFar() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

// steps returns the log so far and starts a new one.
func (r *recordingFS) steps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	log := r.log
	r.log = nil
	return log
}

// index is the position of the first step matching pattern (a prefix;
// "*" stands for the temp file's random part), or -1.
func index(log []string, pattern string) int {
	before, after, wild := strings.Cut(pattern, "*")
	for i, l := range log {
		if !wild && l == pattern || wild && strings.HasPrefix(l, before) && strings.HasSuffix(l, after) {
			return i
		}
	}
	return -1
}

// inOrder fails unless every pattern is in log, each after the one before.
func inOrder(t *testing.T, what string, log []string, patterns ...string) {
	t.Helper()
	last := -1
	for _, p := range patterns {
		i := index(log[last+1:], p)
		if i < 0 {
			t.Fatalf("%s: no %q after step %d in:\n%s", what, p, last, strings.Join(log, "\n"))
		}
		last += i + 1
	}
}

// firstBefore fails unless the first step matching a comes before the
// first matching b: b must not happen, even once, before a.
func firstBefore(t *testing.T, what string, log []string, a, b string) {
	t.Helper()
	if i, j := index(log, a), index(log, b); i < 0 || j < 0 || i > j {
		t.Fatalf("%s: %q (step %d) must come before %q (step %d) in:\n%s", what, a, i, b, j, strings.Join(log, "\n"))
	}
}

// The commit protocol, step by step: a message exists once its metadata is
// in active/, so its data must be synced before, the metadata written
// through a synced temp file and a rename, and the rename made durable by
// syncing the directory, all before Enqueue returns (before the 250).
// Staged data held in memory is written at the commit, a bigger one's as
// it arrives; the order is the same. The data's fsync may end before or
// after the metadata's, never after the rename.
func TestCommitOrder(t *testing.T) {
	small, big := "Subject: s\r\n\r\nbody\r\n", "Subject: s\r\n\r\n"+strings.Repeat("x", memMessage)+"\r\n"
	for _, c := range []struct {
		name   string
		staged bool
		body   string
	}{{"enqueued", false, small}, {"staged in memory", true, small}, {"staged in a file", true, big}} {
		q, r := recorded(t)
		m := newMsg()
		m.ID = "20260101T000000-aaaaaaaaaaaa"
		if c.staged {
			st, err := q.Stage(m, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if created := index(r.log, "create active/"+m.ID+".eml") >= 0; created != (len(c.body) > memMessage) {
				t.Errorf("%s: data file created at staging: %v", c.name, created)
			}
			if err := q.Commit(st, m); err != nil {
				t.Fatal(err)
			}
		} else if err := q.Enqueue(m, strings.NewReader(c.body)); err != nil {
			t.Fatal(err)
		}
		log := r.steps()
		firstBefore(t, c.name, log, "sync active/"+m.ID+".eml", "rename tmp/"+m.ID+".json-* active/"+m.ID+".json")
		inOrder(t, c.name, log, "create active/"+m.ID+".eml", "write active/"+m.ID+".eml", "sync active/"+m.ID+".eml")
		inOrder(t, c.name, log,
			"create active/"+m.ID+".eml",
			"write active/"+m.ID+".eml",
			"create tmp/"+m.ID+".json-*",
			"write tmp/"+m.ID+".json-*",
			"sync tmp/"+m.ID+".json-*",
			"rename tmp/"+m.ID+".json-* active/"+m.ID+".json",
			"syncdir active")
		if got, _ := os.ReadFile(filepath.Join(q.active, m.ID+".eml")); string(got) != c.body {
			t.Errorf("%s: the committed data is %d bytes, want the %d sent", c.name, len(got), len(c.body))
		}
	}
}

// The data's fsync runs beside the metadata's, and the metadata is renamed
// into place only once the data is on disk: here the data's fsync is held
// until the metadata's is done, and the rename must wait for it. When the
// data's fsync fails, nothing of the message is left.
func TestTheMetadataWaitsForTheDataSync(t *testing.T) {
	q, r := recorded(t)
	m := newMsg()
	m.ID = "20260101T000000-cccccccccccc"
	metaSynced, release := make(chan struct{}), make(chan struct{})
	r.beforeSync = func(at string) error {
		if at == "active/"+m.ID+".eml" {
			<-release
		}
		return nil
	}
	st, err := q.Stage(m, strings.NewReader("Subject: s\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() { committed <- q.Commit(st, m) }()
	go func() {
		for index(r.stepsSoFar(), "sync tmp/"+m.ID+".json-*") < 0 {
			time.Sleep(time.Millisecond)
		}
		close(metaSynced)
	}()
	select {
	case <-metaSynced:
	case <-time.After(10 * time.Second):
		t.Fatal("the metadata was not synced while the data's fsync was held")
	}
	time.Sleep(20 * time.Millisecond) // a rename that does not wait would come now
	if i := index(r.stepsSoFar(), "rename tmp/"+m.ID+".json-* active/"+m.ID+".json"); i >= 0 {
		t.Fatalf("the metadata was renamed into place before the data was synced:\n%s", strings.Join(r.stepsSoFar(), "\n"))
	}
	close(release)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	firstBefore(t, "commit", r.steps(), "sync active/"+m.ID+".eml", "rename tmp/"+m.ID+".json-* active/"+m.ID+".json")

	q, r = recorded(t)
	r.beforeSync = func(at string) error {
		if strings.HasSuffix(at, ".eml") {
			return errors.New("injected: the disk failed")
		}
		return nil
	}
	st, err = q.Stage(m, strings.NewReader("Subject: s\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var qe *Error
	if err := q.Commit(st, m); !errors.As(err, &qe) || qe.Op != "fsync" {
		t.Fatalf("a failed data fsync: %v, want the queue's fsync error", err)
	}
	if left, _ := filepath.Glob(filepath.Join(q.dir, "*", "*")); len(left) != 0 {
		t.Fatalf("a failed data fsync left %v", left)
	}
}

// Re-encoded data (Rewrite) takes the staged data's place, in memory or
// in a file, whichever the new size needs: what is synced at the commit,
// under its final name, is the new data.
func TestRewrittenDataIsSyncedBeforeTheMetadata(t *testing.T) {
	small, big := "Subject: s\r\n\r\nlong\r\n", "Subject: s\r\n\r\n"+strings.Repeat("x", memMessage)+"\r\n"
	for _, c := range []struct {
		name     string
		from, to string
		steps    []string
	}{
		{"memory to memory", small, small + "rewritten\r\n", nil},
		{"memory to a file", small, big, []string{"create tmp/ID-*", "rename tmp/ID-* active/ID.eml"}},
		{"a file to a file", big, big + "rewritten\r\n", []string{"create active/ID.eml", "create tmp/ID-*", "rename tmp/ID-* active/ID.eml"}},
		{"a file to memory", big, small, []string{"create active/ID.eml", "remove active/ID.eml", "create active/ID.eml", "write active/ID.eml"}},
	} {
		q, r := recorded(t)
		m := newMsg()
		m.ID = "20260101T000000-bbbbbbbbbbbb"
		st, err := q.Stage(m, strings.NewReader(c.from))
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Rewrite(st, m, func(open func() (io.Reader, error), w io.Writer) error {
			r, err := open()
			if err != nil {
				return err
			}
			if got, _ := io.ReadAll(r); string(got) != c.from {
				t.Errorf("%s: rewrite read %d bytes, want the %d staged", c.name, len(got), len(c.from))
			}
			_, err = io.WriteString(w, c.to)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if m.Size != int64(len(c.to)) {
			t.Errorf("%s: size %d after the rewrite, want %d", c.name, m.Size, len(c.to))
		}
		if err := q.Commit(st, m); err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, s := range c.steps {
			want = append(want, strings.ReplaceAll(s, "ID", m.ID))
		}
		want = append(want,
			"sync active/"+m.ID+".eml",
			"rename tmp/"+m.ID+".json-* active/"+m.ID+".json",
			"syncdir active")
		inOrder(t, c.name, r.steps(), want...)
		if got, _ := os.ReadFile(filepath.Join(q.active, m.ID+".eml")); string(got) != c.to {
			t.Errorf("%s: the committed data is %d bytes, want the %d rewritten", c.name, len(got), len(c.to))
		}
		if tmp, _ := os.ReadDir(q.tmp); len(tmp) != 0 {
			t.Errorf("%s: temp files left: %v", c.name, tmp)
		}
		if used := q.mem.used.Load(); used != 0 {
			t.Errorf("%s: %d bytes of the memory budget still held after the commit", c.name, used)
		}
	}
}

// A delivered message loses its metadata first: a crash between the two
// removals leaves an orphaned data file (removed at start), never metadata
// that points at nothing.
func TestDeleteOrder(t *testing.T) {
	q, r := recorded(t)
	m := newMsg()
	if err := q.Enqueue(m, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	r.steps()
	if err := q.Delete(m.ID); err != nil {
		t.Fatal(err)
	}
	inOrder(t, "delete", r.steps(), "remove active/"+m.ID+".json", "remove active/"+m.ID+".eml")
}

// A move to the failed area makes the failed copy durable (data moved,
// metadata synced and renamed in, directory synced) before the active
// metadata goes: a crash in between leaves the message in one place or
// both, never in neither.
func TestFailOrder(t *testing.T) {
	q, r := recorded(t)
	m := newMsg()
	if err := q.Enqueue(m, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	r.steps()
	if err := q.Fail(m, Outcome{Text: "refused"}); err != nil {
		t.Fatal(err)
	}
	log := r.steps()
	firstBefore(t, "fail", log, "syncdir failed", "remove active/"+m.ID+".json")
	inOrder(t, "fail", log,
		"rename active/"+m.ID+".eml failed/"+m.ID+".eml",
		"sync tmp/"+m.ID+".json-*",
		"rename tmp/"+m.ID+".json-* failed/"+m.ID+".json",
		"syncdir failed",
		"remove active/"+m.ID+".json",
		"syncdir active")
}

// A staged message is settled once: a second Commit or Discard repeats the
// first answer and touches no file (at most one set of fsyncs).
func TestSettlingTwice(t *testing.T) {
	stage := func(t *testing.T, q *Queue) (*Staged, *Message) {
		t.Helper()
		m := newMsg()
		st, err := q.Stage(m, strings.NewReader("Subject: s\r\n\r\nbody\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		return st, m
	}
	t.Run("commit, commit, discard", func(t *testing.T) {
		q, r := recorded(t)
		st, m := stage(t, q)
		if err := q.Commit(st, m); err != nil {
			t.Fatal(err)
		}
		r.steps()
		if err := q.Commit(st, m); err != nil {
			t.Fatalf("second commit: %v", err)
		}
		if err := q.Discard(st); !errors.Is(err, ErrCommitted) {
			t.Fatalf("discard after commit: %v, want ErrCommitted", err)
		}
		if log := r.steps(); len(log) != 0 {
			t.Fatalf("settling again touched files:\n%s", strings.Join(log, "\n"))
		}
		if _, err := q.Get(m.ID); err != nil {
			t.Fatalf("the committed message is gone: %v", err)
		}
	})
	t.Run("discard, commit", func(t *testing.T) {
		q, r := recorded(t)
		st, m := stage(t, q)
		if err := q.Discard(st); err != nil {
			t.Fatal(err)
		}
		r.steps()
		if err := q.Commit(st, m); !errors.Is(err, ErrDiscarded) {
			t.Fatalf("commit after discard: %v, want ErrDiscarded", err)
		}
		if err := q.Discard(st); err != nil {
			t.Fatalf("second discard: %v", err)
		}
		if log := r.steps(); len(log) != 0 {
			t.Fatalf("settling again touched files:\n%s", strings.Join(log, "\n"))
		}
	})
	t.Run("failed commit, commit", func(t *testing.T) {
		q, r := recorded(t)
		st, m := stage(t, q)
		os.RemoveAll(q.tmp)
		os.WriteFile(q.tmp, nil, 0o600) // the metadata's temp file cannot be made
		first := q.Commit(st, m)
		if first == nil {
			t.Fatal("commit succeeded without a tmp directory")
		}
		r.steps()
		if err := q.Commit(st, m); err != first {
			t.Fatalf("second commit: %v, want the first answer %v", err, first)
		}
		if log := r.steps(); len(log) != 0 {
			t.Fatalf("settling again touched files:\n%s", strings.Join(log, "\n"))
		}
		if left, _ := filepath.Glob(filepath.Join(q.active, "*")); len(left) != 0 {
			t.Fatalf("a failed commit left %v", left)
		}
	})
}
