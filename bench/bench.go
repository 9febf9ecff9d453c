// Package bench measures the relay against direct delivery, side by side in
// one run, against the in-process stand-in upstream with TLS and AUTH (or an
// upstream of the user's, Options.Upstream):
//
//   - direct: each client talks to the upstream itself, STARTTLS + AUTH, a
//     new connection per message (what a mail client does without the relay);
//   - relay: each client talks plain SMTP to a relay process (the real
//     binary), which queues durably and delivers over reused connections.
//
// It reports messages per second, client p50/p99 latency, end-to-end time
// until the upstream has every message, upstream logins per 1,000 messages,
// and the relay's idle RSS and RSS growth while relaying one 20 MiB message;
// and, when asked (Options.Latencies), every message's timing as CSV.
package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// Options choose the load.
type Options struct {
	Binary      string // the icloud-relay binary to run as the relay
	Concurrency []int
	Messages    int // per concurrency level and mode
	Rounds      int // the modes alternate in this many rounds per level
	MessageSize int
	SyncWindow  string        // the relay's delivery.sync_window
	BigMessage  bool          // also measure RSS with one 20 MiB message
	RSA         bool          // the stand-in serves an RSA 2048 certificate
	Latency     time.Duration // the stand-in's replies arrive this much later (a network's round trip)
	CPUProfile  string        // the relay writes its CPU profile here (run --cpuprofile)
	// Upstream, when set, is the server both modes send to instead of the
	// in-process stand-in (another stand-in, a test server of your own).
	Upstream *External
	Out      io.Writer
	// Latencies, when set, gets every message's timing as CSV (see
	// writeTimings), for looking at where a tail comes from.
	Latencies io.Writer
}

// External is an upstream of the user's: its host, ports, the CA that
// signed its certificate ("" for the system's roots), the account, and the
// recipient of the test messages.
type External struct {
	Host                  string
	StartTLSPort, TLSPort int
	CAFile                string
	Username, Password    string
	To                    string
}

// Result is one mode at one concurrency.
type Result struct {
	Mode        string
	Concurrency int
	Messages    int
	Refused     int
	Rate        float64 // messages per second, client side
	P50, P99    time.Duration
	EndToEnd    time.Duration // until the upstream had them all
	Logins      int
	CPU         time.Duration   // CPU time of the whole run: clients, stand-in and relay
	RelayCPU    time.Duration   // the relay process's own CPU time (relay mode)
	Rounds      []time.Duration // each round's end-to-end time, in order
}

// Report is the whole run.
type Report struct {
	Latency   time.Duration // added to the stand-in's replies
	External  bool          // against an upstream of the user's, not the stand-in
	Results   []Result
	IdleRSS   int64 // bytes, 0 where unknown
	BigGrowth int64 // peak RSS growth while relaying one 20 MiB message
	BigDone   bool
}

// Run runs the benchmark and prints it.
func Run(ctx context.Context, o Options) (*Report, error) {
	dir, err := os.MkdirTemp("", "icloud-relay-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	up, err := upstreamFor(o, dir)
	if err != nil {
		return nil, err
	}
	defer up.close()
	relay, err := startRelay(ctx, o, up.toml, dir)
	if err != nil {
		return nil, err
	}
	defer relay.stop()
	rep := &Report{Latency: o.Latency, External: o.Upstream != nil}
	time.Sleep(time.Second) // let the relay settle before reading its idle size
	rep.IdleRSS = rssOf(relay.cmd.Process.Pid, "VmRSS")
	relayed := relay.view(up)

	// The big message goes first, while the relay's high-water mark is
	// still its start-up size: measured later, the throughput runs' peak
	// would hide it.
	if o.BigMessage {
		// A small message first: the growth measured is the big message's
		// own, not that of the first upstream connection.
		n := relayed.count()
		if err := sendPlain(relay.addr, up.from, up.to, message(1024)); err != nil {
			return nil, fmt.Errorf("warm-up message: %w", err)
		}
		relayed.wait(n + 1)
		before := rssOf(relay.cmd.Process.Pid, "VmHWM")
		n = relayed.count()
		if err := sendPlain(relay.addr, up.from, up.to, message(20<<20-16<<10)); err != nil {
			return nil, fmt.Errorf("20 MiB message: %w", err)
		}
		relayed.wait(n + 1)
		if before > 0 {
			rep.BigGrowth = max(rssOf(relay.cmd.Process.Pid, "VmHWM")-before, 0)
			rep.BigDone = true
		}
	}
	body := message(o.MessageSize)
	direct := func() error { return up.sendDirect(body) }
	viaRelay := func() error { return sendPlain(relay.addr, up.from, up.to, body) }
	relayPID := strconv.Itoa(relay.cmd.Process.Pid)
	cpu := func() time.Duration { return cpuOf("self") + cpuOf(relayPID) }
	relayCPU := func() time.Duration { return cpuOf(relayPID) }
	rounds := max(o.Rounds, 1)
	var timings *csv.Writer
	if o.Latencies != nil {
		timings = csv.NewWriter(o.Latencies)
		timings.Write([]string{"mode", "concurrency", "round", "start_us", "latency_us", "refused"})
	}
	for _, c := range o.Concurrency {
		// The modes take turns in rounds (direct, relay, relay, direct, ...)
		// so that a noisy neighbour on a shared machine slows both alike.
		var d, r sample
		per := max(o.Messages/rounds, 1)
		for i := 0; i < rounds; i++ {
			runDirect := func() { d.add(writeTimings(timings, "direct", c, i, run(per, c, up.direct, direct, cpu, nil))) }
			runRelay := func() { r.add(writeTimings(timings, "relay", c, i, run(per, c, relayed, viaRelay, cpu, relayCPU))) }
			if i%2 == 0 {
				runDirect()
				runRelay()
			} else {
				runRelay()
				runDirect()
			}
		}
		rep.Results = append(rep.Results, d.result("direct", c), r.result("relay", c))
	}
	if timings != nil {
		if timings.Flush(); timings.Error() != nil {
			return nil, fmt.Errorf("latencies: %w", timings.Error())
		}
	}
	rep.print(o.Out)
	return rep, nil
}

// view is how a run sees the upstream: how many messages it has taken, a
// wait until it has taken total, and how many logins it has seen.
type view struct {
	count  func() int
	wait   func(total int)
	logins func() int
}

// upstream is what both modes send to: the in-process stand-in, or an
// external server.
type upstream struct {
	toml     string // the relay's [upstream] section
	from, to string
	direct   view // as the direct mode sees it
	standIn  *upstreamtest.Server
	dial     func() (*smtp.Client, error)
	user, pw string
	close    func()
	// sentCounter counts what direct clients delivered to an external
	// upstream (nil with the stand-in, which counts for itself).
	sentCounter *atomic.Int64
}

func upstreamFor(o Options, dir string) (*upstream, error) {
	if e := o.Upstream; e != nil {
		return external(e)
	}
	s, err := upstreamtest.Start(upstreamtest.Options{MaxSize: 40 << 20, RSA: o.RSA, Latency: o.Latency})
	if err != nil {
		return nil, err
	}
	ca, err := s.WriteCA(dir)
	if err != nil {
		s.Close()
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CA.PEM)
	v := view{count: func() int { return len(s.Messages()) }, wait: func(n int) { s.WaitMessages(n, 2*time.Minute) }, logins: s.Logins}
	return &upstream{toml: s.UpstreamTOML("", ca), from: s.Username(), to: "friend@example.com", direct: v, standIn: s,
		dial: func() (*smtp.Client, error) {
			return smtp.DialStartTLS(net.JoinHostPort(s.Host, strconv.Itoa(s.StartTLSPort)), &tls.Config{RootCAs: roots, ServerName: s.Host})
		}, user: s.Username(), pw: s.Password(), close: func() { s.Close() }}, nil
}

// external is an upstream of the user's. What it has taken is known only
// through the clients: a direct client's message is taken when its DATA
// is answered (one login each); the relay's, from its /metrics.
func external(e *External) (*upstream, error) {
	var roots *x509.CertPool
	if e.CAFile != "" {
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, err
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", e.CAFile)
		}
	}
	var sent atomic.Int64
	v := view{count: func() int { return int(sent.Load()) }, wait: func(int) {}, logins: func() int { return int(sent.Load()) }}
	toml := fmt.Sprintf("[upstream]\nhost = %q\nstarttls_port = %d\ntls_port = %d\nusername = %q\npassword = %q\n", e.Host, e.StartTLSPort, e.TLSPort, e.Username, e.Password)
	if e.CAFile != "" {
		toml += fmt.Sprintf("ca_file = %q\n", e.CAFile)
	}
	to := e.To
	if to == "" {
		to = e.Username
	}
	return &upstream{toml: toml, from: e.Username, to: to, direct: v,
		dial: func() (*smtp.Client, error) {
			return smtp.DialStartTLS(net.JoinHostPort(e.Host, strconv.Itoa(e.StartTLSPort)), &tls.Config{RootCAs: roots, ServerName: e.Host})
		}, user: e.Username, pw: e.Password, close: func() {}, sentCounter: &sent}, nil
}

// sample is what rounds of one mode measured.
type sample struct {
	sent, logins     int
	each             []timing // in the order the messages were answered
	client, endToEnd time.Duration
	cpu              time.Duration // both processes, client and stand-in included
	relayCPU         time.Duration // the relay's alone
	rounds           []time.Duration
}

// timing is one message's: when its client started it (from the round's
// start), how long until its answer, and whether it was refused.
type timing struct {
	start, took time.Duration
	refused     bool
}

// writeTimings writes s's messages to w (when set) as CSV lines: mode,
// concurrency, round (from 0), start_us (the client's start, from the
// round's), latency_us (until the client had its answer), refused (0/1).
func writeTimings(w *csv.Writer, mode string, c, round int, s sample) sample {
	if w != nil {
		for _, t := range s.each {
			refused := "0"
			if t.refused {
				refused = "1"
			}
			w.Write([]string{mode, strconv.Itoa(c), strconv.Itoa(round), strconv.FormatInt(t.start.Microseconds(), 10), strconv.FormatInt(t.took.Microseconds(), 10), refused})
		}
	}
	return s
}

func (a *sample) add(b sample) {
	a.sent += b.sent
	a.logins += b.logins
	a.each = append(a.each, b.each...)
	a.client += b.client
	a.endToEnd += b.endToEnd
	a.cpu += b.cpu
	a.relayCPU += b.relayCPU
	a.rounds = append(a.rounds, b.endToEnd)
}

// refused counts the messages the clients were refused.
func (a *sample) refused() int {
	n := 0
	for _, t := range a.each {
		if t.refused {
			n++
		}
	}
	return n
}

func (a *sample) result(mode string, c int) Result {
	r := Result{Mode: mode, Concurrency: c, Messages: a.sent, Refused: a.refused(), EndToEnd: a.endToEnd, Logins: a.logins, CPU: a.cpu, RelayCPU: a.relayCPU, Rounds: a.rounds}
	r.Rate = float64(a.sent-r.Refused) / a.client.Seconds()
	var lat []time.Duration // of the messages taken
	for _, t := range a.each {
		if !t.refused {
			lat = append(lat, t.took)
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.P50, r.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return r
}

// run sends n messages from c concurrent clients and waits until the
// upstream has them; relayCPU, when set, is the relay's own CPU time.
func run(n, c int, up view, send func() error, cpu, relayCPU func() time.Duration) sample {
	cpu0, start := cpu(), time.Now()
	var rcpu0 time.Duration
	if relayCPU != nil {
		rcpu0 = relayCPU()
	}
	base, logins := up.count(), up.logins()
	var mu sync.Mutex
	out := sample{sent: n}
	jobs := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				t := time.Now()
				err := send()
				d := time.Since(t)
				mu.Lock()
				out.each = append(out.each, timing{start: t.Sub(start), took: d, refused: err != nil})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	out.client = time.Since(start)
	up.wait(base + n - out.refused())
	out.endToEnd = time.Since(start)
	out.logins = up.logins() - logins
	out.cpu = cpu() - cpu0
	if relayCPU != nil {
		out.relayCPU = relayCPU() - rcpu0
	}
	return out
}

func message(size int) string {
	var b strings.Builder
	b.WriteString("From: <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: bench\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <bench@test>\r\n\r\n")
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// sendDirect sends body as a mail client does without the relay: its own
// connection, STARTTLS and login.
func (u *upstream) sendDirect(body string) error {
	c, err := u.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", u.user, u.pw)); err != nil {
		return err
	}
	if err := transact(c, u.from, u.to, body); err != nil {
		return err
	}
	if u.sentCounter != nil {
		u.sentCounter.Add(1)
	}
	return nil
}

func sendPlain(addr, from, to, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return transact(c, from, to, body)
}

func transact(c *smtp.Client, from, to, body string) error {
	if err := c.SendMail(from, []string{to}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

type relayProc struct {
	cmd     *exec.Cmd
	addr    string
	metrics string // the relay's /metrics
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startRelay(ctx context.Context, o Options, upstreamTOML, dir string) (*relayProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	page, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`[listen]
addr = %q
%s[queue]
dir = %q
[delivery]
sync_window = %q
daily_limit = 0
[log]
file = %q
[status]
addr = %q
`, addr, upstreamTOML, filepath.Join(dir, "queue"), o.SyncWindow, filepath.Join(dir, "relay.log"), page)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	args := []string{"run", "--config", path}
	if o.CPUProfile != "" {
		args = append(args, "--cpuprofile", o.CPUProfile)
	}
	cmd := exec.CommandContext(ctx, o.Binary, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &relayProc{cmd: cmd, addr: addr, metrics: "http://" + page + "/metrics"}, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("the relay did not start listening on %s", addr)
}

// view is the upstream as the relay's messages reach it: the stand-in
// counts them itself; for an external server the relay's own /metrics
// say what it delivered and how often it logged in.
func (r *relayProc) view(up *upstream) view {
	if up.standIn != nil {
		return up.direct
	}
	delivered := func() int { return int(r.metric("icloud_relay_messages_delivered_total")) }
	return view{count: delivered, logins: func() int { return int(r.metric("icloud_relay_upstream_logins_total")) },
		wait: func(total int) {
			for deadline := time.Now().Add(2 * time.Minute); delivered() < total && time.Now().Before(deadline); {
				time.Sleep(2 * time.Millisecond)
			}
		}}
}

// metric is one unlabelled value of the relay's /metrics (0 when absent).
func (r *relayProc) metric(name string) float64 {
	res, err := http.Get(r.metrics)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func (r *relayProc) stop() {
	r.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
	}
}

// rssOf reads a size field (VmRSS, VmHWM) of a process, in bytes; 0 where
// /proc is not available.
func rssOf(pid int, field string) int64 {
	if runtime.GOOS != "linux" {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuOf reads the CPU time (user and system) a process has used, "self"
// for this one; 0 where /proc is not available.
func cpuOf(pid string) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// Fields 14 and 15 (utime, stime) follow the parenthesised command name.
	_, after, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(after)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// roundRatios are the end-to-end ratios direct ÷ relay of each round: the
// two modes ran side by side in it, so their spread is the noise's.
func roundRatios(direct, relay []time.Duration) []float64 {
	var out []float64
	for i := 0; i < min(len(direct), len(relay)); i++ {
		if relay[i] > 0 {
			out = append(out, direct[i].Seconds()/relay[i].Seconds())
		}
	}
	return out
}

func (rep *Report) print(w io.Writer) {
	fmt.Fprintf(w, "%d CPUs, %s/%s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	if rep.External {
		fmt.Fprint(w, "; against your upstream (end to end: until its DATA reply, for the relay until its /metrics count the message delivered)")
	}
	if rep.Latency > 0 {
		fmt.Fprintf(w, "; the stand-in's replies arrive %s late (a network round trip)", rep.Latency)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-7s %5s %6s %8s %9s %9s %10s %8s %13s %9s %15s\n", "mode", "conc", "msgs", "msg/s", "p50", "p99", "end-to-end", "refused", "logins/1000", "cpu/msg", "relay cpu/msg")
	byKey := map[string]Result{}
	for _, r := range rep.Results {
		byKey[fmt.Sprintf("%s/%d", r.Mode, r.Concurrency)] = r
		relayCPU := "-"
		if r.Mode == "relay" {
			relayCPU = (r.RelayCPU / time.Duration(max(r.Messages, 1))).Round(time.Microsecond).String()
		}
		fmt.Fprintf(w, "%-7s %5d %6d %8.1f %9s %9s %10s %8d %13.0f %9s %15s\n", r.Mode, r.Concurrency, r.Messages, r.Rate,
			r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), r.EndToEnd.Round(time.Millisecond), r.Refused,
			float64(r.Logins)*1000/float64(max(r.Messages, 1)), (r.CPU / time.Duration(max(r.Messages, 1))).Round(time.Microsecond), relayCPU)
	}
	fmt.Fprintln(w, "\nrelay / direct:")
	for _, r := range rep.Results {
		if r.Mode != "relay" {
			continue
		}
		d := byKey[fmt.Sprintf("direct/%d", r.Concurrency)]
		fmt.Fprintf(w, "  concurrency %2d: end-to-end throughput %.2fx, client p50 latency %.2fx, client msg/s %.2fx", r.Concurrency,
			d.EndToEnd.Seconds()/r.EndToEnd.Seconds(), r.P50.Seconds()/d.P50.Seconds(), r.Rate/d.Rate)
		if d.CPU > 0 {
			fmt.Fprintf(w, ", CPU per message %.2fx", r.CPU.Seconds()/d.CPU.Seconds())
		}
		fmt.Fprintln(w)
		if ratios := roundRatios(d.Rounds, r.Rounds); len(ratios) > 1 {
			fmt.Fprintf(w, "                  end to end per round:")
			for _, x := range ratios {
				fmt.Fprintf(w, " %.2fx", x)
			}
			fmt.Fprintln(w)
		}
	}
	if rep.IdleRSS > 0 {
		fmt.Fprintf(w, "\nrelay idle RSS: %.1f MiB\n", float64(rep.IdleRSS)/(1<<20))
	}
	if rep.BigDone {
		fmt.Fprintf(w, "relay peak RSS growth while relaying one 20 MiB message: %.1f MiB\n", float64(rep.BigGrowth)/(1<<20))
	}
}
