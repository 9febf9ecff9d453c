// Package control lets the queue commands change the queue safely while a
// relay runs, and directly on disk while none does.
//
// Mechanism: a running relay holds the queue's lock file and serves a small
// HTTP API on a random loopback port; the address and a random token are in
// <queue.dir>/control.json, which only the owner can read (the directory is
// 0700 and the file 0600). Every change goes through the relay's scheduler,
// which knows which message a worker holds, so a command can neither race a
// delivery nor send a message twice. With no relay running, a command takes
// the lock itself and changes the files. Reading (list, show, failed) needs
// neither: metadata files are only ever replaced atomically.
package control

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// Ops are the changes a running relay performs for the queue commands.
type Ops interface {
	Retry(id string) error
	RetryAll() int
	Delete(id string) error
	Requeue(id string) error
}

type endpoint struct {
	Addr  string `json:"addr"`
	Token string `json:"token"`
	PID   int    `json:"pid"`
}

func endpointFile(dir string) string { return filepath.Join(dir, "control.json") }

// Server is the control API of a running relay.
type Server struct {
	srv  *http.Server
	file string
}

// Serve starts the API for ops and publishes its endpoint in dir.
func Serve(dir string, ops Ops) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	var tok [24]byte
	rand.Read(tok[:])
	ep := endpoint{Addr: ln.Addr().String(), Token: hex.EncodeToString(tok[:]), PID: os.Getpid()}
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Token")), []byte(ep.Token)) != 1 {
				http.Error(w, "forbidden", http.StatusForbidden)
				return
			}
			v, err := fn(r)
			w.Header().Set("Content-Type", "application/json")
			if err != nil {
				w.WriteHeader(statusOf(err))
				json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			json.NewEncoder(w).Encode(v)
		})
	}
	handle("POST /retry/{id}", func(r *http.Request) (any, error) { return nil, ops.Retry(r.PathValue("id")) })
	handle("POST /retry-all", func(r *http.Request) (any, error) { return map[string]int{"queued": ops.RetryAll()}, nil })
	handle("POST /delete/{id}", func(r *http.Request) (any, error) { return nil, ops.Delete(r.PathValue("id")) })
	handle("POST /requeue/{id}", func(r *http.Request) (any, error) { return nil, ops.Requeue(r.PathValue("id")) })

	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, file: endpointFile(dir)}
	b, _ := json.Marshal(ep)
	if err := os.WriteFile(s.file, b, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	go s.srv.Serve(ln)
	return s, nil
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return http.StatusNotFound
	case strings.Contains(err.Error(), "being delivered"):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// Close stops the API and removes the endpoint file.
func (s *Server) Close() {
	os.Remove(s.file)
	s.srv.Close()
}

// Queue is the queue as the commands see it: local or through a running relay.
type Queue struct {
	*queue.Queue
	release func()    // set when this process holds the lock (no relay running)
	ep      *endpoint // set when a relay runs
}

// Open opens the queue in dir for commands.
func Open(dir string) (*Queue, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("queue directory %s: %w", dir, err)
	}
	q, err := queue.Open(dir)
	if err != nil {
		return nil, err
	}
	release, err := q.Lock()
	if err == nil {
		return &Queue{Queue: q, release: release}, nil
	}
	if !errors.Is(err, queue.ErrLocked) {
		return nil, err
	}
	b, err := os.ReadFile(endpointFile(dir))
	if err != nil {
		return nil, fmt.Errorf("a relay holds the queue but its control endpoint is unreadable (%w); run this command as the user the relay runs as", err)
	}
	var ep endpoint
	if err := json.Unmarshal(b, &ep); err != nil {
		return nil, fmt.Errorf("control endpoint file %s: %w", endpointFile(dir), err)
	}
	return &Queue{Queue: q, ep: &ep}, nil
}

// Running reports whether a relay runs on this queue.
func (q *Queue) Running() bool { return q.ep != nil }

// Close releases the queue.
func (q *Queue) Close() {
	if q.release != nil {
		q.release()
	}
}

// Retry makes a queued message due now.
func (q *Queue) Retry(id string) error {
	if q.ep != nil {
		return q.call("retry/"+id, nil)
	}
	m, err := q.Get(id)
	if err != nil {
		return err
	}
	m.NextAttempt = time.Now()
	return q.Update(m)
}

// RetryAll makes every queued message due now.
func (q *Queue) RetryAll() (int, error) {
	if q.ep != nil {
		var out map[string]int
		err := q.call("retry-all", &out)
		return out["queued"], err
	}
	msgs, err := q.Active()
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		m.NextAttempt = time.Now()
		if err := q.Update(m); err != nil {
			return 0, err
		}
	}
	return len(msgs), nil
}

// Delete removes a message, queued or failed.
func (q *Queue) Delete(id string) error {
	if q.ep != nil {
		return q.call("delete/"+id, nil)
	}
	if err := q.Remove(id); !errors.Is(err, queue.ErrNotFound) {
		return err
	}
	return q.RemoveFailed(id)
}

// Requeue moves a failed message back into the queue.
func (q *Queue) Requeue(id string) error {
	if q.ep != nil {
		return q.call("requeue/"+id, nil)
	}
	_, err := q.Queue.Requeue(id)
	return err
}

var client = &http.Client{Timeout: 30 * time.Second}

func (q *Queue) call(path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+q.ep.Addr+"/"+path, nil)
	req.Header.Set("X-Token", q.ep.Token)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the relay (pid %d) holds the queue but does not answer: %w", q.ep.PID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		json.Unmarshal(b, &e)
		msg := e["error"]
		if msg == "" {
			msg = resp.Status
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s: %w", msg, queue.ErrNotFound)
		}
		return errors.New(msg)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}
