package queue

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrLocked means another process (a running relay) holds the queue.
var ErrLocked = errors.New("the queue is in use by another process")

// Lock takes the queue for this process: one relay per queue directory, and
// no offline change while a relay runs. The lock ends with release or with
// the process.
func (q *Queue) Lock() (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(q.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, &Error{Op: "lock", Err: err}
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, ErrLocked
		}
		return nil, &Error{Op: "lock", Err: err}
	}
	return func() { f.Close() }, nil
}

// Get returns an active message's metadata.
func (q *Queue) Get(id string) (*Message, error) { return q.get(q.active, id) }

// GetFailed returns a failed message's metadata.
func (q *Queue) GetFailed(id string) (*Message, error) { return q.get(q.failed, id) }

func (q *Queue) get(dir, id string) (*Message, error) {
	if !ValidID(id) {
		return nil, &Error{Op: "find", ID: id, Err: ErrNotFound}
	}
	m, err := readMeta(q.metaPath(dir, id))
	if errors.Is(err, fs.ErrNotExist) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, &Error{Op: "find", ID: id, Err: err}
	}
	return m, nil
}

// Headers returns the header block of a message, active or failed.
func (q *Queue) Headers(id string) (string, error) {
	if !ValidID(id) {
		return "", &Error{Op: "read", ID: id, Err: ErrNotFound}
	}
	f, err := os.Open(q.dataPath(q.active, id))
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.Open(q.dataPath(q.failed, id))
	}
	if err != nil {
		return "", &Error{Op: "read", ID: id, Err: err}
	}
	defer f.Close()
	var b strings.Builder
	r := bufio.NewReader(f)
	for b.Len() < 256<<10 {
		line, err := r.ReadString('\n')
		if strings.TrimRight(line, "\r\n") == "" {
			break
		}
		b.WriteString(line)
		if err != nil {
			break
		}
	}
	return b.String(), nil
}

// Remove deletes an active message on the user's request.
func (q *Queue) Remove(id string) error {
	if _, err := q.Get(id); err != nil {
		return err
	}
	return q.Delete(id)
}

// RemoveFailed deletes a message from the failed area.
func (q *Queue) RemoveFailed(id string) error {
	if _, err := q.GetFailed(id); err != nil {
		return err
	}
	if err := q.fs.Remove(q.metaPath(q.failed, id)); err != nil {
		return &Error{Op: "delete", ID: id, Err: err}
	}
	q.fs.Remove(q.dataPath(q.failed, id))
	return q.fs.SyncDir(q.failed)
}

// Requeue moves a failed message back to the queue: its failed recipients
// become pending again and it gets a fresh max-age window.
func (q *Queue) Requeue(id string) (*Message, error) {
	m, err := q.GetFailed(id)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(q.dataPath(q.failed, id)); err != nil {
		return nil, &Error{Op: "requeue", ID: id, Err: fmt.Errorf("message data is gone: %w", err)}
	}
	now := time.Now()
	for i := range m.Rcpts {
		if m.Rcpts[i].Status == Failed {
			m.Rcpts[i].Status = Pending
		}
	}
	m.Final, m.Received, m.NextAttempt = nil, now, now
	if err := q.fs.Rename(q.dataPath(q.failed, id), q.dataPath(q.active, id)); err != nil {
		return nil, &Error{Op: "requeue", ID: id, Err: err}
	}
	if err := q.writeMeta(q.active, m); err != nil {
		return nil, err
	}
	q.fs.Remove(q.metaPath(q.failed, id))
	q.fs.SyncDir(q.failed)
	return m, nil
}

// SaveState stores a small piece of relay state (e.g. the sending counter)
// beside the queue, atomically.
func (q *Queue) SaveState(name string, data []byte) error {
	if err := q.writeAtomic(filepath.Join(q.dir, name), data, nil); err != nil {
		return &Error{Op: "save " + name, Err: err}
	}
	return nil
}

// LoadState reads what SaveState stored; a missing file is no error.
func (q *Queue) LoadState(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(q.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
