package status

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// Source is the running relay as the page sees it. Every change goes
// through the relay's scheduler.
type Source interface {
	Report() Report
	Metrics() Sample
	Events() []json.RawMessage
	Retry(id string) error
	RetryAll() int
	Delete(id string) error
	Requeue(id string) error
	// Check runs the troubleshooting checklist: begin for a step that
	// starts, done for each step decided (a doctor step, as JSON has it);
	// it says whether mail can flow.
	Check(ctx context.Context, begin func(name string), done func(step any)) bool
	// SendTest sends a short message to the account's own address through
	// the relay, as any client would; it says what became of it.
	SendTest(ctx context.Context) (string, error)
}

//go:embed page
var page embed.FS

// cookieName holds the per-install token; a state-changing request must
// also carry it in its "csrf" form field (or X-CSRF-Token header).
const cookieName = "icloud_relay_token"

// maxConns bounds the page's connections: it is for one person's browser.
const maxConns = 16

// Server is the status page, its API and /metrics on one loopback listener.
type Server struct {
	src   Source
	token string
	hosts map[string]bool // the Host values the page answers to
	url   string
	ln    net.Listener
	http  *http.Server
	log   zerolog.Logger
	html  []byte // the page with the token in
	wg    sync.WaitGroup
}

// LoadToken returns the per-install token kept in dir (made on first use,
// readable by the relay's owner only): a page left open keeps working
// across restarts.
func LoadToken(dir string) (string, error) {
	path := filepath.Join(dir, "status.token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) == 48 {
		return strings.TrimSpace(string(b)), nil
	}
	var raw [24]byte
	rand.Read(raw[:])
	tok := hex.EncodeToString(raw[:])
	f, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if err := private.Restrict(f.Name()); err != nil {
		f.Close()
		return "", err
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return tok, os.Rename(path+".tmp", path)
}

// Serve starts the page on addr (a loopback address; port 0 picks one).
func Serve(addr, token string, src Source, log zerolog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	s := &Server{src: src, token: token, ln: ln, log: log, hosts: map[string]bool{},
		url: fmt.Sprintf("http://%s/", net.JoinHostPort(hostOf(addr), fmt.Sprint(port)))}
	// DNS rebinding: a name that resolves to 127.0.0.1 gets no answer; the
	// page answers to its loopback address and "localhost" only.
	for _, h := range []string{hostOf(addr), "localhost", "127.0.0.1", "[::1]"} {
		s.hosts[net.JoinHostPort(strings.Trim(h, "[]"), fmt.Sprint(port))] = true
	}
	html, err := page.ReadFile("page/index.html")
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.html = []byte(strings.Replace(string(html), "{{TOKEN}}", token, 1))
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
		ErrorLog: stdlog.New(io.Discard, "", 0)} // a client's broken request is its own business, not a log line
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.http.Serve(&limitListener{Listener: ln, slots: make(chan struct{}, maxConns)})
	}()
	return s, nil
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil || h == "" || h == "0.0.0.0" || h == "::" {
		return "127.0.0.1"
	}
	return h
}

// URL is the page's address.
func (s *Server) URL() string { return s.url }

// Close stops the page; a check in progress is cut off.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.http.Shutdown(ctx) != nil {
		s.http.Close()
	}
	s.wg.Wait()
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	if !s.hosts[strings.ToLower(r.Host)] {
		http.Error(w, "This page answers only at "+s.url+" (the Host "+fmt.Sprintf("%q", r.Host)+" is not this relay's).", http.StatusMisdirectedRequest)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.get(w, r)
	case http.MethodPost:
		if !s.authorized(r) {
			http.Error(w, "Forbidden: this request does not carry the page's token. Reload the status page and try again.", http.StatusForbidden)
			return
		}
		s.post(w, r)
	default:
		h.Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/":
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(s.html)
	case "/app.js", "/style.css":
		b, _ := page.ReadFile("page" + r.URL.Path)
		ct := "text/css; charset=utf-8"
		if strings.HasSuffix(r.URL.Path, ".js") {
			ct = "text/javascript; charset=utf-8"
		}
		w.Header().Set("Content-Type", ct)
		w.Write(b)
	case "/api/status":
		writeJSON(w, s.src.Report())
	case "/api/events":
		writeJSON(w, s.src.Events())
	case "/metrics":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, s.src.Metrics())
	default:
		http.NotFound(w, r)
	}
}

// authorized: the cookie (sent by the browser only to a same-site request)
// and the form's token (which only a page of this origin can read) both
// match, and an Origin, when the browser sends one, is this page's.
func (s *Server) authorized(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" && !s.hosts[strings.ToLower(strings.TrimPrefix(o, "http://"))] {
		return false
	}
	c, err := r.Cookie(cookieName)
	if err != nil || !equal(c.Value, s.token) {
		return false
	}
	r.Body = http.MaxBytesReader(nil, r.Body, 4<<10)
	form := r.Header.Get("X-CSRF-Token")
	if form == "" {
		form = r.PostFormValue("csrf")
	}
	return equal(form, s.token)
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// reply is what a change answers.
type reply struct {
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

func (s *Server) post(w http.ResponseWriter, r *http.Request) {
	id := r.PostFormValue("id")
	var err error
	msg := ""
	switch r.URL.Path {
	case "/api/retry":
		if err = s.src.Retry(id); err == nil {
			msg = "Trying " + id + " now."
		}
	case "/api/retry-all":
		msg = fmt.Sprintf("Trying all %d queued messages now.", s.src.RetryAll())
	case "/api/delete":
		if err = s.src.Delete(id); err == nil {
			msg = "Deleted " + id + "."
		}
	case "/api/requeue":
		if err = s.src.Requeue(id); err == nil {
			msg = "Queued " + id + " again; it is tried now."
		}
	case "/api/test":
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		msg, err = s.src.SendTest(ctx)
	case "/api/check":
		s.check(w, r)
		return
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		code := http.StatusConflict
		if errors.Is(err, queue.ErrNotFound) {
			code = http.StatusNotFound
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(reply{Message: err.Error()})
		return
	}
	s.log.Info().Str("action", strings.TrimPrefix(r.URL.Path, "/api/")).Str(logging.KeyQueueID, id).Msg(logging.EvStatusAction)
	writeJSON(w, reply{OK: true, Message: msg})
}

// check streams the checklist as server-sent events: "begin" (a step that
// may take a while starts), "step" (a step decided, as doctor --json has
// it) and "done" (the verdict).
func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(3 * time.Minute))
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Minute)
	defer cancel()
	st := &stream{w: w, rc: rc}
	ok := s.src.Check(ctx, func(name string) { st.send("begin", map[string]string{"name": name}) },
		func(step any) { st.send("step", step) })
	st.send("done", map[string]bool{"ok": ok})
}

type stream struct {
	mu sync.Mutex
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (st *stream) send(event string, v any) {
	b, _ := json.Marshal(v)
	st.mu.Lock()
	defer st.mu.Unlock()
	fmt.Fprintf(st.w, "event: %s\ndata: %s\n\n", event, b)
	st.rc.Flush()
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// limitListener serves at most cap(slots) connections at once; more wait
// in the kernel's backlog.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
