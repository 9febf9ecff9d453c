package queue

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Quarantined is a queue entry Recover could not use.
type Quarantined struct {
	ID     string
	Reason string
}

// Recovery reports what Recover did.
type Recovery struct {
	TempRemoved    int           // half-written files from before a crash
	OrphansRemoved int           // message data never committed (the client got no 250)
	FailsFinished  int           // moves to failed/ interrupted by a crash, completed
	Quarantined    []Quarantined // unreadable entries moved to failed/
}

// Recover makes the directory consistent after a crash. Call it once at
// start, before any other method.
func (q *Queue) Recover() (Recovery, error) {
	var rep Recovery
	tmp, err := os.ReadDir(q.tmp)
	if err != nil {
		return rep, &Error{Op: "recover", Err: err}
	}
	for _, e := range tmp {
		if os.RemoveAll(filepath.Join(q.tmp, e.Name())) == nil {
			rep.TempRemoved++
		}
	}
	entries, err := os.ReadDir(q.active)
	if err != nil {
		return rep, &Error{Op: "recover", Err: err}
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Name()] = true
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".eml"):
			id := strings.TrimSuffix(name, ".eml")
			if !have[id+".json"] {
				if os.Remove(filepath.Join(q.active, name)) == nil {
					rep.OrphansRemoved++
				}
			}
		case strings.HasSuffix(name, ".json"):
			id := strings.TrimSuffix(name, ".json")
			if err := q.recoverOne(id, have[id+".eml"], &rep); err != nil {
				return rep, err
			}
		default:
			q.quarantineFile(name, fmt.Sprintf("unexpected file %q in the queue", name), &rep)
		}
	}
	syncDir(q.active)
	return rep, nil
}

func (q *Queue) recoverOne(id string, hasData bool, rep *Recovery) error {
	metaPath := q.metaPath(q.active, id)
	m, err := readMeta(metaPath)
	if err != nil {
		q.quarantineFile(id+".json", err.Error(), rep)
		if hasData {
			os.Rename(q.dataPath(q.active, id), q.dataPath(q.failed, id))
		}
		return nil
	}
	if !hasData {
		if _, err := os.Stat(q.dataPath(q.failed, id)); err == nil {
			// A move to failed/ was interrupted: finish it.
			final := Outcome{Time: time.Now(), Stage: "queue", Text: "moved to the failed area (completed after a restart)"}
			if m.Final == nil {
				if last := m.LastError(); last != nil {
					final = *last
				}
			} else {
				final = *m.Final
			}
			if err := q.Fail(m, final); err != nil {
				return err
			}
			rep.FailsFinished++
			return nil
		}
		rep.Quarantined = append(rep.Quarantined, Quarantined{ID: id, Reason: "message data file is missing"})
		return q.Fail(m, Outcome{Time: time.Now(), Stage: "queue", Text: "message data file is missing; nothing to deliver"})
	}
	st, err := os.Stat(q.dataPath(q.active, id))
	if err != nil {
		return &Error{Op: "recover", ID: id, Err: err}
	}
	if st.Size() != m.Size {
		reason := fmt.Sprintf("message data is %d bytes, the metadata says %d: the file was truncated or changed", st.Size(), m.Size)
		rep.Quarantined = append(rep.Quarantined, Quarantined{ID: id, Reason: reason})
		return q.Fail(m, Outcome{Time: time.Now(), Stage: "queue", Text: reason})
	}
	return nil
}

// quarantineFile moves an unreadable file into failed/ under a .bad name and
// writes a note beside it, so the user can see what happened and nothing is
// silently deleted.
func (q *Queue) quarantineFile(name, reason string, rep *Recovery) {
	id := strings.TrimSuffix(name, filepath.Ext(name))
	src := filepath.Join(q.active, name)
	dst := filepath.Join(q.failed, name+".bad")
	if err := os.Rename(src, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return
	}
	os.WriteFile(dst+".reason", []byte(reason+"\n"), 0o600)
	rep.Quarantined = append(rep.Quarantined, Quarantined{ID: id, Reason: reason})
}
