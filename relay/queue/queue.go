// Package queue is the durable spool between the local listener and delivery.
//
// Layout under the queue directory:
//
//	tmp/          files being written; anything here at start is debris
//	active/ID.eml the message as the intake made it (relay.Intake)
//	active/ID.json its envelope and delivery state (the commit marker)
//	failed/       the same pair for messages that will not be delivered,
//	              with the final reason
//
// A message's states, and who may change its files in each (one owner at
// a time; ARCHITECTURE.md has the whole table):
//
//	staged     in memory, or .eml   the door that staged it (Commit or Discard, once)
//	queued     .eml + .json         the scheduler
//	sending    as queued            one delivery worker
//	delivered  removed (.json first) —
//	failed     in failed/           the queue commands (requeue, delete)
//
// Invariants:
//   - A message exists once its .json is in active/. The .eml is written
//     and fsynced; the .json is written to a temp file and fsynced (while
//     the .eml's fsync runs), and renamed into active/ only once both are
//     on disk, followed by an fsync of the directory. Enqueue (or Stage and
//     Commit) returns only after all of that, so a 250 "queued" to the
//     client means the message is on disk. A staged message (its data in
//     memory, or an .eml without .json) is not a message yet.
//   - Every state change rewrites the .json atomically (temp, fsync, rename).
//   - Delivered messages lose their .json first, so a crash leaves at worst
//     an orphaned .eml, which Recover removes.
//   - Recover quarantines what it cannot read into failed/ with the reason;
//     it never deletes a message that has metadata.
package queue

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/private"
)

// Version is the metadata format written by this code.
const Version = 1

// maxHistory bounds the attempt history kept per message.
const maxHistory = 20

// Status is a recipient's delivery state.
type Status string

// Recipient states.
const (
	Pending   Status = "pending"
	Delivered Status = "delivered"
	Failed    Status = "failed"
)

// Recipient is one envelope recipient and how far its delivery got.
type Recipient struct {
	Addr   string   `json:"addr"`
	Status Status   `json:"status"`
	Error  *Outcome `json:"error,omitempty"`
}

// Outcome records a delivery attempt or a final reason.
type Outcome struct {
	Time         time.Time `json:"time"`
	Stage        string    `json:"stage,omitempty"`
	Port         int       `json:"port,omitempty"`
	Code         int       `json:"smtp_code,omitempty"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Text         string    `json:"text"`
	Class        string    `json:"class,omitempty"`  // what it meant for delivery (upstream.Class)
	Advice       string    `json:"advice,omitempty"` // what to check about the cause
	Remedy       string    `json:"remedy,omitempty"` // the advice and what the relay does by itself
	// Temporary is read from records written before Class was; new ones
	// leave it out.
	Temporary bool `json:"temporary,omitempty"`
}

// Message is a queued message's metadata.
type Message struct {
	Version     int         `json:"version"`
	ID          string      `json:"id"`
	From        string      `json:"from"`
	Rcpts       []Recipient `json:"rcpts"`
	MessageID   string      `json:"message_id,omitempty"` // the Message-ID header, for the log
	UTF8        bool        `json:"utf8,omitempty"`       // needs SMTPUTF8
	EightBit    bool        `json:"eight_bit,omitempty"`  // needs 8BITMIME
	Size        int64       `json:"size"`
	Received    time.Time   `json:"received"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt"`
	History     []Outcome   `json:"history,omitempty"`
	Final       *Outcome    `json:"final,omitempty"`  // why it is in failed/
	Notice      bool        `json:"notice,omitempty"` // a failure notice made by the relay
}

// Clone returns a copy of m that shares nothing with it.
func (m *Message) Clone() *Message {
	c := *m
	c.Rcpts = append([]Recipient(nil), m.Rcpts...)
	c.History = append([]Outcome(nil), m.History...)
	return &c
}

// Pending returns the recipients still to be delivered.
func (m *Message) Pending() []string {
	var out []string
	for _, r := range m.Rcpts {
		if r.Status == Pending {
			out = append(out, r.Addr)
		}
	}
	return out
}

// Record appends an attempt to the history, keeping the newest ones.
func (m *Message) Record(o Outcome) {
	m.History = append(m.History, o)
	if len(m.History) > maxHistory {
		m.History = append(m.History[:0:0], m.History[len(m.History)-maxHistory:]...)
	}
}

// LastError returns the newest recorded attempt, or nil.
func (m *Message) LastError() *Outcome {
	if len(m.History) == 0 {
		return nil
	}
	return &m.History[len(m.History)-1]
}

// Error is a queue failure; Op names what was being done.
type Error struct {
	Op  string
	ID  string
	Err error
}

func (e *Error) Error() string {
	if e.ID == "" {
		return "queue: " + e.Op + ": " + e.Err.Error()
	}
	return "queue: " + e.Op + " " + e.ID + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrNotFound is returned for an ID that is not in the queue.
var ErrNotFound = errors.New("no such message")

// Queue is a spool directory. Its methods are safe for concurrent use on
// different messages; one message must have one owner at a time.
type Queue struct {
	dir, tmp, active, failed string
	tightened                []string
	fs                       fileSystem
	mem                      memory // for staged data (staged.go)
}

// Open creates the directory layout if needed, owner-only: queued mail is
// private. An existing directory that others may read is made private
// (internal/private: the mode on Unix, a DACL on Windows), where its owner
// runs this.
func Open(dir string) (*Queue, error) {
	q := &Queue{dir: dir, tmp: filepath.Join(dir, "tmp"), active: filepath.Join(dir, "active"), failed: filepath.Join(dir, "failed"), fs: osFS{}}
	for _, d := range []string{q.dir, q.tmp, q.active, q.failed} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, &Error{Op: "open", Err: err}
		}
		if who, err := private.Exposed(d); err == nil && who != "" && private.Restrict(d) == nil {
			q.tightened = append(q.tightened, d)
		}
	}
	return q, nil
}

// Tightened lists the directories Open made owner-only.
func (q *Queue) Tightened() []string { return q.tightened }

// Dir returns the queue's directory.
func (q *Queue) Dir() string { return q.dir }

var idPattern = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z-]{0,63}$`)

// ValidID reports whether id could name a queued message (no path tricks).
func ValidID(id string) bool { return idPattern.MatchString(id) }

// NewID returns a fresh message ID.
func NewID(now time.Time) string {
	var b [6]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Enqueue writes body and m durably and fills in m.ID, m.Size, m.Version and
// m.Received. Only a nil return means the message is safe.
func (q *Queue) Enqueue(m *Message, body io.Reader) error {
	st, err := q.Stage(m, body)
	if err != nil {
		return err
	}
	return q.Commit(st, m)
}

// Update rewrites m's metadata atomically.
func (q *Queue) Update(m *Message) error {
	return q.writeMeta(q.active, m)
}

// Body opens the message data of an active message.
func (q *Queue) Body(id string) (*os.File, error) {
	f, err := os.Open(q.dataPath(q.active, id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = ErrNotFound
		}
		return nil, &Error{Op: "open", ID: id, Err: err}
	}
	return f, nil
}

// Delete removes a delivered message: metadata first, so that a crash
// cannot leave metadata pointing at nothing. The directory is not synced:
// losing a removal to a power cut can only cause a duplicate, never a loss,
// and an fsync per delivered message is a real cost.
func (q *Queue) Delete(id string) error {
	if err := q.fs.Remove(q.metaPath(q.active, id)); err != nil {
		return &Error{Op: "delete", ID: id, Err: err}
	}
	if err := q.fs.Remove(q.dataPath(q.active, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &Error{Op: "delete", ID: id, Err: err}
	}
	return nil
}

// Fail moves m to the failed area with the final reason.
func (q *Queue) Fail(m *Message, final Outcome) error {
	m.Final = &final
	if err := q.fs.Rename(q.dataPath(q.active, m.ID), q.dataPath(q.failed, m.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &Error{Op: "fail", ID: m.ID, Err: err}
	}
	if err := q.writeMeta(q.failed, m); err != nil {
		return err
	}
	if err := q.fs.Remove(q.metaPath(q.active, m.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &Error{Op: "fail", ID: m.ID, Err: err}
	}
	q.fs.SyncDir(q.active)
	return nil
}

// Active lists the messages waiting for delivery, oldest first.
func (q *Queue) Active() ([]*Message, error) { return q.list(q.active) }

// Failed lists the failed area, oldest first.
func (q *Queue) Failed() ([]*Message, error) { return q.list(q.failed) }

func (q *Queue) list(dir string) ([]*Message, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, &Error{Op: "list", Err: err}
	}
	var out []*Message
	for _, name := range names {
		m, err := readMeta(name)
		if err != nil {
			continue // Recover quarantines these; a listing skips them
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Received.Before(out[j].Received) })
	return out, nil
}

func (q *Queue) dataPath(dir, id string) string { return filepath.Join(dir, id+".eml") }
func (q *Queue) metaPath(dir, id string) string { return filepath.Join(dir, id+".json") }

func (q *Queue) writeMeta(dir string, m *Message) error {
	return q.writeMetaAfter(dir, m, nil)
}

// writeMetaAfter is writeMeta whose rename waits for ready (when set): the
// metadata appears only if ready returns nil, else its error is returned
// as it is.
func (q *Queue) writeMetaAfter(dir string, m *Message, ready func() error) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return &Error{Op: "encode", ID: m.ID, Err: err}
	}
	if err := q.writeAtomic(q.metaPath(dir, m.ID), b, ready); err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			return err // ready's
		}
		return &Error{Op: "write metadata", ID: m.ID, Err: err}
	}
	return nil
}

// writeAtomic writes data to path through a synced temp file and a rename,
// then syncs the directory so the rename itself survives a power cut. The
// rename waits for ready, when set: an error from it leaves path as it was.
func (q *Queue) writeAtomic(path string, data []byte, ready func() error) error {
	f, err := q.fs.CreateTemp(q.tmp, filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil && ready != nil {
		werr = ready()
	}
	if werr == nil {
		werr = q.fs.Rename(f.Name(), path)
	}
	if werr != nil {
		q.fs.Remove(f.Name())
		return werr
	}
	return q.fs.SyncDir(filepath.Dir(path))
}

func readMeta(path string) (*Message, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("unreadable metadata: %w", err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("unknown metadata version %d (this program reads version %d)", m.Version, Version)
	}
	if want := strings.TrimSuffix(filepath.Base(path), ".json"); m.ID != want || !ValidID(m.ID) {
		return nil, fmt.Errorf("metadata names message %q, file is %q", m.ID, want)
	}
	if len(m.Rcpts) == 0 {
		return nil, errors.New("metadata has no recipients")
	}
	return &m, nil
}
