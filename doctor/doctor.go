// Package doctor runs the "Cannot Send Mail" troubleshooting checklist
// automatically: config and credential shape, DNS, each port, TLS and the
// certificate, EHLO, login, every sender address, optionally a real test
// message, then the local side (listener, queue directory, queue state).
//
// Each step is ok, fail, warn or skip, and a failed step carries the same
// stage and remedy as the relay's log line for the same fault, because both
// come from upstream.Error. The password is never part of a report.
package doctor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/buildinfo"
	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// Status is a step's verdict.
type Status string

// Step verdicts. Only Fail stops mail from flowing.
const (
	OK   Status = "ok"
	Fail Status = "fail"
	Warn Status = "warn"
	Skip Status = "skip"
)

// Step is one line of the checklist.
type Step struct {
	Name         string  `json:"name"`
	Status       Status  `json:"status"`
	Detail       string  `json:"detail"`
	Remedy       string  `json:"remedy,omitempty"`
	Stage        string  `json:"stage,omitempty"`
	Class        string  `json:"class,omitempty"` // what the failure means for delivery (upstream.Class)
	Port         int     `json:"port,omitempty"`
	Code         int     `json:"smtp_code,omitempty"`
	EnhancedCode string  `json:"enhanced_code,omitempty"`
	Millis       float64 `json:"ms,omitempty"`
}

// Report is the whole checklist. OK means mail can flow.
type Report struct {
	Version string `json:"version"` // the relay's build (internal/buildinfo)
	OK      bool   `json:"ok"`
	Steps   []Step `json:"steps"`
}

// Options change what is checked.
type Options struct {
	SendTest string // when set, send a short test message to this address
	// Progress, when set, is told of each check as it starts and ends (a
	// terminal shows the steps as they run).
	Progress Progress
}

// Progress follows a run.
type Progress interface {
	Begin(name string) // a check that may take a while starts
	Done(s Step)       // a step is decided
}

type run struct {
	ctx      context.Context
	cfg      *config.Config
	rep      *Report
	progress Progress
}

func (r *run) add(s Step) {
	r.rep.Steps = append(r.rep.Steps, s)
	if r.progress != nil {
		r.progress.Done(s)
	}
}

func (r *run) begin(name string) {
	if r.progress != nil {
		r.progress.Begin(name)
	}
}

func (r *run) failure(name string, err error, took time.Duration) {
	s := Step{Name: name, Status: Fail, Detail: err.Error(), Millis: ms(took)}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		s.Detail, s.Remedy, s.Stage, s.Port, s.Code, s.EnhancedCode = ue.Text, ue.Remedy, string(ue.Stage), ue.Port, ue.Code, ue.EnhancedCode
		s.Class = string(ue.Class)
	}
	r.add(s)
}

func ms(d time.Duration) float64 {
	return float64(d.Round(100*time.Microsecond)) / float64(time.Millisecond)
}

var appPassword = regexp.MustCompile(`^[a-z]{4}-[a-z]{4}-[a-z]{4}-[a-z]{4}$`)

// Run checks everything it can and returns the report.
func Run(ctx context.Context, cfg *config.Config, opts Options) *Report {
	r := &run{ctx: ctx, cfg: cfg, rep: &Report{Version: buildinfo.Get().Short()}, progress: opts.Progress}
	r.configStep()
	r.upstreamSteps(opts)
	r.localSteps()
	r.rep.OK = true
	for _, s := range r.rep.Steps {
		if s.Status == Fail {
			r.rep.OK = false
		}
	}
	return r.rep
}

func (r *run) configStep() {
	u := r.cfg.Upstream
	detail := fmt.Sprintf("account %s on %s (ports %d, %d); sender %s", u.Username, u.Host, u.StartTLSPort, u.TLSPort, strings.Join(r.cfg.Sender.Addresses(), ", "))
	if !appPassword.MatchString(u.Password.Reveal()) {
		r.add(Step{Name: "config", Status: Warn, Detail: detail + "; the password does not look like an app-specific password (xxxx-xxxx-xxxx-xxxx)",
			Remedy: "iCloud needs an app-specific password: appleid.apple.com → Sign-In and Security → App-Specific Passwords. Your Apple Account password will be refused."})
		return
	}
	r.add(Step{Name: "config", Status: OK, Detail: detail + "; password has the app-specific shape"})
}

func (r *run) upstreamSteps(opts Options) {
	var events []upstream.Event
	client := app.Upstream(r.cfg, func(e upstream.Event) { events = append(events, e) })
	start := time.Now()
	r.begin("dns")
	addrs, err := client.Lookup(r.ctx)
	if err != nil {
		r.failure("dns", err, time.Since(start))
		r.skip("tcp", "greeting", "tls", "ehlo", "auth", "sender")
		return
	}
	r.add(Step{Name: "dns", Status: OK, Detail: r.cfg.Upstream.Host + " is " + strings.Join(addrs, ", "), Millis: ms(time.Since(start))})

	// Both ports at once: a port that drops connections costs one
	// timeout, not one per port.
	starttls, implicit := client.Ports()
	ports := []int{starttls, implicit}
	type dial struct {
		took time.Duration
		err  error
	}
	dials := make([]dial, len(ports))
	var wg sync.WaitGroup
	r.begin(fmt.Sprintf("tcp %d and %d", starttls, implicit))
	for i, port := range ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dials[i].took, dials[i].err = client.DialPort(r.ctx, port)
		}()
	}
	wg.Wait()
	open := 0
	for i, port := range ports {
		if err := dials[i].err; err != nil {
			r.failure(fmt.Sprintf("tcp %d", port), err, dials[i].took)
			continue
		}
		open++
		r.add(Step{Name: fmt.Sprintf("tcp %d", port), Status: OK, Detail: fmt.Sprintf("connected in %.1f ms", ms(dials[i].took)), Port: port, Millis: ms(dials[i].took)})
	}
	if dials[0].err != nil && dials[1].err == nil {
		// Do not wait for the closed port again: start with the open one.
		client.Remember(upstream.PortMemory{Port: implicit, Since: time.Now()})
	}
	if open == 0 {
		r.skip("greeting", "tls", "ehlo", "auth", "sender")
		return
	}
	if open == 1 {
		// Mail can flow on the other port: a warning, not a failure.
		for i := range r.rep.Steps {
			if s := &r.rep.Steps[i]; s.Status == Fail && strings.HasPrefix(s.Name, "tcp ") {
				s.Status = Warn
				s.Remedy += " Mail still flows through the other port."
			}
		}
	}

	start = time.Now()
	r.begin("tls and login")
	sess, err := client.Open(r.ctx)
	took := time.Since(start)
	if err != nil {
		var ue *upstream.Error
		errors.As(err, &ue)
		r.sessionSteps(events, ue, took, nil)
		return
	}
	defer sess.Close()
	r.fallbackNotes(events, sess.Port())
	ok, size := sess.Extension("SIZE")
	_, auth := sess.Extension("AUTH")
	caps := "AUTH " + auth
	if ok {
		caps += ", SIZE " + size
	}
	r.sessionSteps(events, nil, took, map[string]string{
		"ehlo": caps, "tls": fmt.Sprintf("port %d: %s", sess.Port(), upstream.CertSummary(sess.TLS()))})
	r.sizeStep(size)

	for _, from := range r.cfg.Sender.Addresses() {
		start := time.Now()
		r.begin("sender " + from)
		if err := sess.CheckSender(from); err != nil {
			r.failure("sender "+from, err, time.Since(start))
			continue
		}
		r.add(Step{Name: "sender " + from, Status: OK, Detail: "accepted as sender (MAIL FROM, then RSET; nothing sent)", Port: sess.Port(), Millis: ms(time.Since(start))})
	}
	if opts.SendTest != "" {
		r.sendTest(sess, opts.SendTest)
	}
}

// permissionsStep checks that the password (in the config or its file)
// and the queue are readable by their owner only (internal/private: the
// mode on Unix, the DACL on Windows).
func (r *run) permissionsStep(queueDir string) {
	exposed := r.cfg.ExposedSecrets()
	if who, err := private.Exposed(queueDir); err == nil && who != "" {
		exposed = append(exposed, "the queue "+queueDir+": "+who)
	}
	if len(exposed) > 0 {
		r.add(Step{Name: "permissions", Status: Warn, Detail: strings.Join(exposed, "; "),
			Remedy: "Make them readable by the relay's user only (the commands are named above); icloud-relay setup writes them so, and the relay makes its queue private when it starts."})
		return
	}
	r.add(Step{Name: "permissions", Status: OK, Detail: "the password and the queue are readable by their owner only"})
}

// sizeStep compares the relay's size limit with the one iCloud advertises
// (EHLO SIZE).
func (r *run) sizeStep(advertised string) {
	limit, err := strconv.ParseInt(advertised, 10, 64)
	if err != nil || limit <= 0 {
		r.add(Step{Name: "size", Status: OK, Detail: "the server advertises no size limit"})
		return
	}
	own := int64(r.cfg.Listen.MaxMessageSize)
	detail := fmt.Sprintf("iCloud accepts messages up to %s; listen.max_message_size is %s", mb(limit), mb(own))
	if own > limit {
		r.add(Step{Name: "size", Status: Warn, Detail: detail,
			Remedy: fmt.Sprintf("Messages larger than %s are refused at once (552) although the relay's own limit is higher: set listen.max_message_size to %d or less so that the limit clients see is the real one.", mb(limit), limit)})
		return
	}
	r.add(Step{Name: "size", Status: OK, Detail: detail})
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// sessionSteps turns the trace of an Open into the tls, ehlo and auth steps.
// detail, when it has a step's name, replaces what the trace says.
func (r *run) sessionSteps(events []upstream.Event, failed *upstream.Error, took time.Duration, detail map[string]string) {
	names := []struct {
		name   string
		stages []upstream.Stage
	}{
		{"greeting", []upstream.Stage{upstream.StageConnect, upstream.StageGreeting}},
		{"tls", []upstream.Stage{upstream.StageStartTLS, upstream.StageTLS}},
		{"ehlo", []upstream.Stage{upstream.StageEHLO}},
		{"auth", []upstream.Stage{upstream.StageAuth}},
	}
	done := false
	for _, n := range names {
		switch {
		case done:
			r.add(Step{Name: n.name, Status: Skip, Detail: "not reached"})
		case failed != nil && contains(n.stages, failed.Stage):
			r.failure(n.name, failed, took)
			done = true
		default:
			d, ok := detail[n.name]
			for _, e := range events {
				if !ok && contains(n.stages, e.Stage) && e.Err == nil {
					d = e.Detail
				}
			}
			r.add(Step{Name: n.name, Status: OK, Detail: d})
		}
	}
	if done || failed != nil {
		r.skip("sender")
	}
}

// fallbackNotes warns when the first port failed and the other one works.
func (r *run) fallbackNotes(events []upstream.Event, working int) {
	for _, e := range events {
		if e.Err != nil && !e.Switched {
			r.add(Step{Name: "fallback", Status: Warn, Detail: e.Detail, Stage: string(e.Stage), Port: e.Port,
				Code: e.Err.Code, EnhancedCode: e.Err.EnhancedCode,
				Remedy: fmt.Sprintf("Mail flows through port %d, which the relay uses by itself. About port %d: %s", working, e.Port, e.Err.Remedy)})
		}
	}
}

func (r *run) sendTest(sess *upstream.Session, to string) {
	from := r.cfg.Sender.Address
	body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: icloud-relay doctor test\r\nDate: %s\r\nMessage-ID: <doctor-%d@%s>\r\n\r\nThis is a test message sent by icloud-relay doctor.\r\n",
		from, to, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), domainOf(from))
	start := time.Now()
	res, err := sess.Send(&upstream.Message{From: from, To: []string{to}, Size: int64(len(body)), Body: strings.NewReader(body)})
	if err == nil && len(res.Refused) > 0 {
		err = res.Refused[to]
	}
	if err != nil {
		r.failure("send-test "+to, err, time.Since(start))
		return
	}
	r.add(Step{Name: "send-test " + to, Status: OK, Detail: "test message accepted by the server", Port: sess.Port(), Millis: ms(time.Since(start))})
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return "localhost"
}

func (r *run) localSteps() {
	l := r.cfg.Listen
	start := time.Now()
	if greeting, err := dialListener(l.Addr); err != nil {
		r.add(Step{Name: "listener", Status: Warn, Detail: fmt.Sprintf("nothing answers on %s: the relay is not running (%v)", l.Addr, err),
			Remedy: "Start the relay: icloud-relay run --config FILE, or install it as a service."})
	} else {
		r.add(Step{Name: "listener", Status: OK, Detail: fmt.Sprintf("%s answers: %s", l.Addr, greeting), Millis: ms(time.Since(start))})
	}

	dir := r.cfg.Queue.Dir
	q, err := queue.Open(dir)
	if err == nil {
		var f *os.File
		if f, err = os.CreateTemp(dir, ".doctor-*"); err == nil {
			f.Close()
			err = os.Remove(f.Name())
		}
	}
	if err != nil {
		r.add(Step{Name: "queue dir", Status: Fail, Detail: err.Error(), Stage: "queue",
			Remedy: "The relay cannot store mail: make queue.dir writable for the user the relay runs as, and check free disk space."})
		r.skip("queue")
		return
	}
	r.add(Step{Name: "queue dir", Status: OK, Detail: dir + " is writable"})
	r.permissionsStep(dir)

	active, _ := q.Active()
	failed, _ := q.Failed()
	detail := fmt.Sprintf("%d queued, %d failed", len(active), len(failed))
	st := Step{Name: "queue", Status: OK, Detail: detail}
	if len(active) > 0 {
		oldest := active[0]
		st.Detail += fmt.Sprintf("; oldest queued %s ago", time.Since(oldest.Received).Round(time.Second))
		if last := oldest.LastError(); last != nil {
			st.Detail += fmt.Sprintf(" (last error at %s: %s)", last.Stage, last.Text)
		}
		if time.Since(oldest.Received) > time.Hour {
			st.Status, st.Remedy = Warn, "Messages have waited over an hour: the steps above (or the log) say why."
		}
	}
	if len(failed) > 0 && st.Status == OK {
		st.Status, st.Remedy = Warn, "Some messages could not be delivered; their reasons are in the log and in the queue's failed/ directory."
	}
	r.add(st)
}

func dialListener(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	io.WriteString(conn, "QUIT\r\n")
	if !strings.HasPrefix(line, "220") {
		return "", fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	return strings.TrimSpace(line), nil
}

func (r *run) skip(names ...string) {
	for _, n := range names {
		r.add(Step{Name: n, Status: Skip, Detail: "not reached"})
	}
}

func contains(stages []upstream.Stage, s upstream.Stage) bool {
	for _, x := range stages {
		if x == s {
			return true
		}
	}
	return false
}

var marks = map[Status]string{OK: "✓", Fail: "✗", Warn: "!", Skip: "-"}

// WriteText prints one line per step and, under a failure or warning, its
// remedy; then the verdict.
func (rep *Report) WriteText(w io.Writer) {
	for _, s := range rep.Steps {
		writeStep(w, s)
	}
	rep.WriteSummary(w)
}

func writeStep(w io.Writer, s Step) {
	line := fmt.Sprintf("%s %-22s %s", marks[s.Status], s.Name, s.Detail)
	if s.Code != 0 {
		line += fmt.Sprintf(" [%d %s]", s.Code, s.EnhancedCode)
	}
	fmt.Fprintln(w, strings.TrimRight(line, " "))
	if s.Remedy != "" && (s.Status == Fail || s.Status == Warn) {
		fmt.Fprintf(w, "  → %s\n", s.Remedy)
	}
}

// WriteSummary prints the verdict alone (the steps were shown as they ran).
func (rep *Report) WriteSummary(w io.Writer) {
	if rep.OK {
		fmt.Fprintln(w, "\nMail can flow.")
	} else {
		fmt.Fprintln(w, "\nMail cannot flow: fix the ✗ steps above.")
	}
}

// TerminalProgress shows each step on w as it runs: a "… checking" line
// while a check waits on the network, replaced by the step's line.
func TerminalProgress(w io.Writer) Progress { return &terminal{w: w} }

type terminal struct {
	w       io.Writer
	pending bool
}

func (t *terminal) Begin(name string) {
	t.clear()
	fmt.Fprintf(t.w, "… checking %s", name)
	t.pending = true
}

func (t *terminal) Done(s Step) {
	t.clear()
	writeStep(t.w, s)
}

func (t *terminal) clear() {
	if t.pending {
		fmt.Fprint(t.w, "\r\033[K")
		t.pending = false
	}
}

// ConfigFailure is the report when the config cannot be loaded: doctor
// --json prints JSON in every case.
func ConfigFailure(err error) *Report {
	return &Report{Version: buildinfo.Get().Short(), Steps: []Step{{Name: "config", Status: Fail, Detail: err.Error(),
		Remedy: "Fix the config file at the line named (config.example.toml lists every option), or pass the right one with --config."}}}
}

// WriteJSON prints the report as one JSON document.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
