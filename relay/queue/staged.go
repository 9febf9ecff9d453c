package queue

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A staged message's data is held in memory while it is small: until its
// door commits it no client has been told it is safe, so a crash loses
// nothing the relay promised, and one the upstream takes within the sync
// window never touches the disk (no file created, read back and removed:
// on a loopback bench the create alone cost more than the rest of the
// intake). Bigger data, and any once the staged data in memory of all
// doors together reaches memBudget, goes to active/ID.eml as it arrives.
const (
	memMessage = 128 << 10
	memBudget  = 8 << 20
)

// memory is the budget for staged data held in memory, shared by a queue's
// doors.
type memory struct{ used atomic.Int64 }

func (b *memory) reserve(n int) bool {
	if b.used.Add(int64(n)) <= memBudget {
		return true
	}
	b.used.Add(-int64(n))
	return false
}

func (b *memory) release(n int) { b.used.Add(-int64(n)) }

// Staged is a message whose data is taken but not yet durable, and which
// has no metadata: not yet a message (a restart forgets it, or removes its
// data file). It is settled once, by Commit or Discard; settling it again
// repeats the first answer and touches nothing.
type Staged struct {
	id string
	// The data: mem when held in memory (path ""), else the file at path,
	// open as f. Rewrite may replace them, before the door hands the
	// message on; from then on they do not change, so a delivery worker
	// may read them (Open) while the door settles the message.
	mem  []byte
	path string
	f    file
	held int // bytes of the memory budget mem holds until settled

	state stagedState
	err   error // why the commit failed (commitFailed)
}

type stagedState int

const (
	staged stagedState = iota
	committed
	discarded
	commitFailed // nothing of it is left
)

// ErrDiscarded answers a Commit of a staged message already discarded.
var ErrDiscarded = errors.New("the staged message was discarded")

// ErrCommitted answers a Discard of a staged message already committed:
// it is a message now, removed only by Delete.
var ErrCommitted = errors.New("the staged message is committed")

// Stage takes the message data like Enqueue and fills in m, but does not
// make it durable. Commit makes it a message; Discard drops it. A relay
// about to hand a message upstream while its client waits stages it, and
// commits only if the upstream does not take it at once: what the upstream
// has accepted needs no local copy, and three fsyncs are saved.
func (q *Queue) Stage(m *Message, body io.Reader) (*Staged, error) {
	now := time.Now()
	m.Version, m.Received = Version, now
	if m.ID == "" {
		m.ID = NewID(now)
	}
	if m.NextAttempt.IsZero() {
		m.NextAttempt = now
	}
	// A data file goes straight to its place: without its metadata it is
	// not a message, and Recover removes it.
	dataPath := q.dataPath(q.active, m.ID)
	sp := &spool{q: q, id: m.ID, create: func() (file, error) {
		return q.fs.OpenFile(dataPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	}}
	if _, err := io.Copy(sp, body); err != nil {
		sp.abort()
		var qe *Error
		if !errors.As(err, &qe) {
			err = &Error{Op: "write", ID: m.ID, Err: err}
		}
		return nil, err
	}
	m.Size = sp.n
	st := &Staged{id: m.ID, mem: sp.mem, held: sp.held, f: sp.f}
	if sp.f != nil {
		st.path = dataPath
	}
	return st, nil
}

// Open reads the staged data from its start (it can be read again: an
// io.Seeker), for a delivery worker while the door still owns the message.
func (st *Staged) Open() (io.ReadSeekCloser, error) {
	if st.path == "" {
		return memBody{bytes.NewReader(st.mem)}, nil
	}
	f, err := os.Open(st.path)
	if err != nil {
		return nil, &Error{Op: "open", ID: st.id, Err: err}
	}
	return f, nil
}

type memBody struct{ *bytes.Reader }

func (memBody) Close() error { return nil }

// Rewrite replaces a staged message's data with what rewrite makes of it
// (the intake re-encodes long lines so), and updates m.Size. rewrite gets
// a function that opens the staged data from its start, as often as it
// needs. New data in a file takes the old one's place by a rename, which
// is safe: a staged message has no metadata yet. On error the staged
// message is left as it was, and the error is rewrite's own (unwrapped),
// so the caller can tell a refusal from a failure to write.
func (q *Queue) Rewrite(st *Staged, m *Message, rewrite func(open func() (io.Reader, error), w io.Writer) error) error {
	var opened []io.Closer
	closeOpened := func() {
		for _, f := range opened {
			f.Close()
		}
		opened = nil
	}
	defer closeOpened()
	open := func() (io.Reader, error) {
		r, err := st.Open()
		if err != nil {
			return nil, err
		}
		opened = append(opened, r)
		return r, nil
	}
	sp := &spool{q: q, id: st.id, create: func() (file, error) { return q.fs.CreateTemp(q.tmp, st.id+"-*.eml") }}
	if err := rewrite(open, sp); err != nil {
		sp.abort()
		return err
	}
	// On Windows an open file can be neither replaced nor renamed: close
	// every handle first, and open the new data again after.
	closeOpened()
	if sp.f == nil {
		if st.f != nil {
			st.f.Close()
			q.fs.Remove(st.path)
		}
		q.mem.release(st.held)
		st.mem, st.held, st.path, st.f = sp.mem, sp.held, "", nil
		m.Size = sp.n
		return nil
	}
	dataPath := q.dataPath(q.active, st.id)
	tmp := sp.f.Name()
	if err := sp.f.Close(); err != nil {
		q.fs.Remove(tmp)
		return &Error{Op: "rewrite", ID: st.id, Err: err}
	}
	if st.f != nil {
		st.f.Close()
	}
	if err := q.fs.Rename(tmp, dataPath); err != nil {
		q.fs.Remove(tmp)
		if st.f != nil { // closed for the rename: open it again
			if f, oerr := q.fs.OpenFile(st.path, os.O_RDWR, 0); oerr == nil {
				st.f = f
			}
		}
		return &Error{Op: "rewrite", ID: st.id, Err: err}
	}
	// Read-write: Commit syncs it, which Windows allows only so.
	f, err := q.fs.OpenFile(dataPath, os.O_RDWR, 0)
	if err != nil {
		return &Error{Op: "rewrite", ID: st.id, Err: err}
	}
	q.mem.release(st.held)
	st.mem, st.held, st.path, st.f = nil, 0, dataPath, f
	m.Size = sp.n
	return nil
}

// Commit makes a staged message durable: the data is written if it was
// held in memory, and synced, then m, its metadata, written. On failure
// nothing of it is left. A second Commit returns the first one's answer
// (ErrDiscarded after a Discard).
func (q *Queue) Commit(st *Staged, m *Message) error {
	switch st.state {
	case committed:
		return nil
	case discarded:
		return ErrDiscarded
	case commitFailed:
		return st.err
	}
	st.err = q.commit(st, m)
	q.mem.release(st.held)
	st.held = 0
	if st.err != nil {
		st.state = commitFailed
		return st.err
	}
	st.state = committed
	return nil
}

func (q *Queue) commit(st *Staged, m *Message) error {
	dataPath := q.dataPath(q.active, st.id)
	f := st.f
	if st.path == "" {
		var err error
		if f, err = q.fs.OpenFile(dataPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
			return &Error{Op: "create", ID: st.id, Err: err}
		}
		if _, err := f.Write(st.mem); err != nil {
			f.Close()
			q.fs.Remove(dataPath)
			return &Error{Op: "write", ID: st.id, Err: err}
		}
	}
	// The data's fsync runs while the metadata is written and synced (a
	// file system that batches its journal commits does both in one); the
	// metadata is renamed into place only once both are on disk.
	synced := make(chan error, 1)
	go func() {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		synced <- err
	}()
	dataSynced := sync.OnceValue(func() error {
		if err := <-synced; err != nil {
			return &Error{Op: "fsync", ID: st.id, Err: err}
		}
		return nil
	})
	err := q.writeMetaAfter(q.active, m, dataSynced)
	if derr := dataSynced(); err == nil {
		err = derr // (it is nil when the metadata is in place)
	}
	if err != nil {
		q.fs.Remove(dataPath)
		return err
	}
	return nil
}

// Discard drops a staged message (the upstream has it). A Discard after a
// successful Commit is refused with ErrCommitted and removes nothing.
func (q *Queue) Discard(st *Staged) error {
	switch st.state {
	case committed:
		return ErrCommitted
	case discarded, commitFailed:
		return nil // nothing of it is left
	}
	st.state = discarded
	q.mem.release(st.held)
	st.held = 0
	if st.path == "" {
		return nil
	}
	st.f.Close()
	if err := q.fs.Remove(st.path); err != nil {
		return &Error{Op: "delete", ID: st.id, Err: err}
	}
	return nil
}

// spool takes staged data: in memory while it fits (memMessage, and the
// queue's memory budget), else in the file create makes, which first gets
// what was held. Its own failures are *Error.
type spool struct {
	q      *Queue
	id     string
	create func() (file, error)
	mem    []byte
	held   int
	f      file
	n      int64
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil {
		if len(s.mem)+len(p) <= memMessage && s.q.mem.reserve(len(p)) {
			s.mem = append(s.mem, p...)
			s.held += len(p)
			s.n += int64(len(p))
			return len(p), nil
		}
		f, err := s.create()
		if err != nil {
			return 0, &Error{Op: "create", ID: s.id, Err: err}
		}
		s.f = f
		_, err = f.Write(s.mem)
		s.q.mem.release(s.held)
		s.mem, s.held = nil, 0
		if err != nil {
			return 0, &Error{Op: "write", ID: s.id, Err: err}
		}
	}
	n, err := s.f.Write(p)
	s.n += int64(n)
	if err != nil {
		return n, &Error{Op: "write", ID: s.id, Err: err}
	}
	return n, nil
}

// abort drops what the spool took.
func (s *spool) abort() {
	s.q.mem.release(s.held)
	s.mem, s.held = nil, 0
	if s.f != nil {
		s.f.Close()
		s.q.fs.Remove(s.f.Name())
	}
}
