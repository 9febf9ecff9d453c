// Package control lets the queue commands change the queue safely while a
// relay runs, and directly on disk while none does.
//
// Mechanism: a running relay holds the queue's lock file and serves a small
// API on a random loopback port; the address and a random token are in
// <queue.dir>/control.json, which only the owner can read (the directory is
// 0700 and the file 0600). Every change goes through the relay's scheduler,
// which knows which message a worker holds, so a command can neither race a
// delivery nor send a message twice. With no relay running, a command takes
// the lock itself and changes the files. Reading (list, show, failed) needs
// neither: metadata files are only ever replaced atomically.
//
// Any local user can connect to the port, so it cannot be starved: at most
// maxConns connections are served at once (more are closed at once), a
// connection must send its request within requestTimeout, and the accept
// loop survives running out of file descriptors (it waits and goes on,
// as net/http does), saying so in the log once a minute at most.
package control

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/internal/redact"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

const (
	maxConns       = 8
	requestTimeout = 2 * time.Second
	replyTimeout   = 30 * time.Second
	logEvery       = time.Minute
)

// Ops are the changes a running relay performs for the queue commands.
type Ops interface {
	Retry(id string) error
	RetryAll() int
	Delete(id string) error
	Requeue(id string) error
	Hold() (upstream.Class, time.Time)
	// Status is the relay's health summary (the status page's report
	// without its message lists), as JSON.
	Status() json.RawMessage
}

type endpoint struct {
	Addr  string `json:"addr"`
	Token string `json:"token"`
	PID   int    `json:"pid"`
}

func endpointFile(dir string) string { return filepath.Join(dir, "control.json") }

// Server is the control API of a running relay: one JSON request line
// and one JSON reply line per connection (net/http would cost the
// always-on process 2 MiB for four commands).
type Server struct {
	ln     net.Listener
	ops    Ops
	tok    string
	file   string
	log    zerolog.Logger
	red    *redact.Redactor
	reload func() // nil: reloads are not taken here
	slots  chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	logged map[string]time.Time // when each kind of trouble was last logged
}

type request struct {
	Token string `json:"token"`
	Op    string `json:"op"` // retry, retry-all, delete, requeue
	ID    string `json:"id,omitempty"`
}

type reply struct {
	Error    string          `json:"error,omitempty"`
	NotFound bool            `json:"not_found,omitempty"`
	Queued   int             `json:"queued,omitempty"`
	Hold     string          `json:"hold,omitempty"`
	Until    *time.Time      `json:"until,omitempty"`
	Status   json.RawMessage `json:"status,omitempty"`
}

// Serve starts the API for ops and publishes its endpoint in dir; red
// masks secrets in its replies; reload, when set, starts a reload of the
// config ("icloud-relay reload", which Windows needs: it has no SIGHUP).
func Serve(dir string, ops Ops, log zerolog.Logger, red *redact.Redactor, reload func()) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	var tok [24]byte
	rand.Read(tok[:])
	s := &Server{ln: ln, ops: ops, tok: hex.EncodeToString(tok[:]), file: endpointFile(dir), log: log, red: red, reload: reload,
		slots: make(chan struct{}, maxConns), logged: map[string]time.Time{}}
	b, _ := json.Marshal(endpoint{Addr: ln.Addr().String(), Token: s.tok, PID: os.Getpid()})
	if err := os.WriteFile(s.file, b, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.trouble("accept", func() {
				s.log.Error().Err(err).Str(logging.KeyStage, "accept").Int64("retry_in_ms", delay.Milliseconds()).
					Str("remedy", "The relay is out of open files: too many connections are open to it. It goes on by itself; raise the open-file limit (ulimit -n, LimitNOFILE=) if this repeats.").
					Msg("control API cannot accept a connection; retrying")
			})
			time.Sleep(delay)
			continue
		}
		delay = 0
		select {
		case s.slots <- struct{}{}:
		default:
			c.Close()
			s.trouble("busy", func() {
				s.log.Warn().Str(logging.KeyStage, "accept").Int("max_connections", maxConns).
					Str("remedy", "Something on this machine opens many connections to the relay's control port; queue commands retry by themselves.").
					Msg("control API busy: connection closed")
			})
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			defer c.Close()
			s.serveConn(c)
		}()
	}
}

// serveConn answers one request: it must come within requestTimeout.
func (s *Server) serveConn(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	var req request
	if err := json.NewDecoder(io.LimitReader(c, 64<<10)).Decode(&req); err != nil {
		return
	}
	c.SetWriteDeadline(time.Now().Add(replyTimeout))
	json.NewEncoder(c).Encode(s.handle(req))
}

// trouble runs log unless the same kind of trouble was logged within
// logEvery: a flood makes one line, not one a connection.
func (s *Server) trouble(kind string, log func()) {
	s.mu.Lock()
	now := time.Now()
	if last, ok := s.logged[kind]; ok && now.Sub(last) < logEvery {
		s.mu.Unlock()
		return
	}
	s.logged[kind] = now
	s.mu.Unlock()
	log()
}

func (s *Server) handle(req request) reply {
	if subtle.ConstantTimeCompare([]byte(req.Token), []byte(s.tok)) != 1 {
		return reply{Error: "forbidden: wrong control token"}
	}
	var err error
	var r reply
	switch req.Op {
	case "retry":
		err = s.ops.Retry(req.ID)
	case "retry-all":
		r.Queued = s.ops.RetryAll()
	case "delete":
		err = s.ops.Delete(req.ID)
	case "requeue":
		err = s.ops.Requeue(req.ID)
	case "hold":
		class, until := s.ops.Hold()
		r.Hold = string(class)
		if !until.IsZero() {
			r.Until = &until
		}
	case "status":
		r.Status = s.ops.Status()
	case "reload":
		if s.reload == nil {
			err = errors.New("this relay does not take reloads")
			break
		}
		// Not in this request: a reload replaces this very API.
		go s.reload()
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		r.Error, r.NotFound = s.red.String(err.Error()), errors.Is(err, queue.ErrNotFound)
	}
	return r
}

// Close stops the API and removes the endpoint file.
func (s *Server) Close() {
	os.Remove(s.file)
	s.ln.Close()
	s.wg.Wait()
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

// Close releases the queue.
func (q *Queue) Close() {
	if q.release != nil {
		q.release()
	}
}

// Retry makes a queued message due now.
func (q *Queue) Retry(id string) error {
	if q.ep != nil {
		_, err := q.call("retry", id)
		return err
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
		r, err := q.call("retry-all", "")
		return r.Queued, err
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
		_, err := q.call("delete", id)
		return err
	}
	if err := q.Remove(id); !errors.Is(err, queue.ErrNotFound) {
		return err
	}
	return q.RemoveFailed(id)
}

// Hold is what holds every delivery of the running relay, if anything:
// the class of the failure that did (see upstream.Class) and until when
// (zero: until the server answers again). A queue with no relay running
// holds nothing.
func (q *Queue) Hold() (upstream.Class, time.Time, error) {
	if q.ep == nil {
		return "", time.Time{}, nil
	}
	r, err := q.call("hold", "")
	if err != nil || r.Until == nil {
		return upstream.Class(r.Hold), time.Time{}, err
	}
	return upstream.Class(r.Hold), *r.Until, nil
}

// Status is the running relay's health summary (JSON), or ErrNotRunning.
func (q *Queue) Status() (json.RawMessage, error) {
	if q.ep == nil {
		return nil, ErrNotRunning
	}
	r, err := q.call("status", "")
	return r.Status, err
}

// ErrNotRunning: no relay runs on the queue.
var ErrNotRunning = errors.New("no relay is running on this queue")

// Reload asks the running relay to read its config again, and waits until
// it has replaced itself (its control endpoint is published anew) or the
// time runs out.
func (q *Queue) Reload(wait time.Duration) error {
	if q.ep == nil {
		return ErrNotRunning
	}
	before := q.ep.Token
	if _, err := q.call("reload", ""); err != nil {
		return err
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ep endpoint
		if b, err := os.ReadFile(endpointFile(q.Dir())); err == nil && json.Unmarshal(b, &ep) == nil && ep.Token != before {
			return nil
		}
	}
	return fmt.Errorf("the relay (pid %d) took the reload but did not come back within %s; see its log", q.ep.PID, wait)
}

// Requeue moves a failed message back into the queue.
func (q *Queue) Requeue(id string) error {
	if q.ep != nil {
		_, err := q.call("requeue", id)
		return err
	}
	_, err := q.Queue.Requeue(id)
	return err
}

// call asks the relay to do op, trying again for a while when the relay
// is too busy to take the connection (the control port is capped).
func (q *Queue) call(op, id string) (reply, error) {
	deadline := time.Now().Add(10 * time.Second)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		r, again, err := q.try(op, id)
		if !again || time.Now().Add(wait).After(deadline) {
			return r, err
		}
		time.Sleep(wait)
	}
}

// try makes one call; again says whether another try may succeed.
func (q *Queue) try(op, id string) (r reply, again bool, err error) {
	c, err := net.DialTimeout("tcp", q.ep.Addr, 10*time.Second)
	if err != nil {
		return reply{}, true, fmt.Errorf("the relay (pid %d) holds the queue but does not answer: %w", q.ep.PID, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(replyTimeout))
	if err := json.NewEncoder(c).Encode(request{Token: q.ep.Token, Op: op, ID: id}); err != nil {
		return reply{}, true, err
	}
	if err := json.NewDecoder(io.LimitReader(c, 64<<10)).Decode(&r); err != nil {
		// Closed unanswered: the relay was too busy to take it.
		busy := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		return reply{}, busy, fmt.Errorf("no answer from the relay (pid %d): %w", q.ep.PID, err)
	}
	switch {
	case r.NotFound:
		return r, false, fmt.Errorf("%s: %w", r.Error, queue.ErrNotFound)
	case r.Error != "":
		return r, false, errors.New(r.Error)
	}
	return r, false, nil
}
