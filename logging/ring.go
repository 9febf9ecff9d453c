package logging

import (
	"bytes"
	"encoding/json"
	"sync"
)

// Ring keeps the last lines of the log at info and above (already masked:
// it sits behind the redactor), for the status page's "last events". It
// outlives the loggers a reload makes: each is given the same Ring.
type Ring struct {
	mu    sync.Mutex
	lines [][]byte
	next  int
	full  bool
}

// NewRing returns a Ring of n lines.
func NewRing(n int) *Ring { return &Ring{lines: make([][]byte, n)} }

// Write keeps one JSON log line (zerolog writes each in one call).
func (r *Ring) Write(p []byte) (int, error) {
	// zerolog opens every line with its level.
	if bytes.HasPrefix(p, []byte(`{"level":"debug"`)) || bytes.HasPrefix(p, []byte(`{"level":"trace"`)) {
		return len(p), nil
	}
	line := bytes.TrimRight(bytes.Clone(p), "\n")
	r.mu.Lock()
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	r.full = r.full || r.next == 0
	r.mu.Unlock()
	return len(p), nil
}

// Lines returns the kept lines, newest first.
func (r *Ring) Lines() []json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.lines)
	}
	out := make([]json.RawMessage, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.lines[(r.next-i+len(r.lines))%len(r.lines)])
	}
	return out
}
