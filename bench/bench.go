// Package bench measures the relay against direct delivery, side by side in
// one run, against the in-process stand-in upstream with TLS and AUTH:
//
//   - direct: each client talks to the upstream itself, STARTTLS + AUTH, a
//     new connection per message (what a mail client does without the relay);
//   - relay: each client talks plain SMTP to a relay process (the real
//     binary), which queues durably and delivers over reused connections.
//
// It reports messages per second, client p50/p99 latency, end-to-end time
// until the upstream has every message, upstream logins per 1,000 messages,
// and the relay's idle RSS and RSS growth while relaying one 20 MiB message.
package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
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
	Out         io.Writer
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
	CPU         time.Duration // CPU time of the whole run: clients, stand-in and relay
}

// Report is the whole run.
type Report struct {
	Latency   time.Duration // added to the stand-in's replies
	Results   []Result
	IdleRSS   int64 // bytes, 0 where unknown
	BigGrowth int64 // peak RSS growth while relaying one 20 MiB message
	BigDone   bool
}

// Run runs the benchmark and prints it.
func Run(ctx context.Context, o Options) (*Report, error) {
	s, err := upstreamtest.Start(upstreamtest.Options{MaxSize: 40 << 20, RSA: o.RSA, Latency: o.Latency})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	dir, err := os.MkdirTemp("", "icloud-relay-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ca, err := s.WriteCA(dir)
	if err != nil {
		return nil, err
	}
	relay, err := startRelay(ctx, o, s, dir, ca)
	if err != nil {
		return nil, err
	}
	defer relay.stop()
	rep := &Report{Latency: o.Latency}
	time.Sleep(time.Second) // let the relay settle before reading its idle size
	rep.IdleRSS = rssOf(relay.cmd.Process.Pid, "VmRSS")

	// The big message goes first, while the relay's high-water mark is
	// still its start-up size: measured later, the throughput runs' peak
	// would hide it.
	if o.BigMessage {
		// A small message first: the growth measured is the big message's
		// own, not that of the first upstream connection.
		n := len(s.Messages())
		if err := sendPlain(relay.addr, s.Username(), message(1024)); err != nil {
			return nil, fmt.Errorf("warm-up message: %w", err)
		}
		s.WaitMessages(n+1, time.Minute)
		before := rssOf(relay.cmd.Process.Pid, "VmHWM")
		n = len(s.Messages())
		if err := sendPlain(relay.addr, s.Username(), message(20<<20-16<<10)); err != nil {
			return nil, fmt.Errorf("20 MiB message: %w", err)
		}
		s.WaitMessages(n+1, time.Minute)
		if before > 0 {
			rep.BigGrowth = max(rssOf(relay.cmd.Process.Pid, "VmHWM")-before, 0)
			rep.BigDone = true
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CA.PEM)
	body := message(o.MessageSize)
	direct := func() error { return sendDirect(s, pool, body) }
	viaRelay := func() error { return sendPlain(relay.addr, s.Username(), body) }
	cpu := func() time.Duration { return cpuOf("self") + cpuOf(strconv.Itoa(relay.cmd.Process.Pid)) }
	rounds := max(o.Rounds, 1)
	for _, c := range o.Concurrency {
		// The modes take turns in rounds (direct, relay, relay, direct, ...)
		// so that a noisy neighbour on a shared machine slows both alike.
		var d, r sample
		per := max(o.Messages/rounds, 1)
		for i := 0; i < rounds; i++ {
			if i%2 == 0 {
				d.add(run(per, c, s, direct, cpu))
				r.add(run(per, c, s, viaRelay, cpu))
			} else {
				r.add(run(per, c, s, viaRelay, cpu))
				d.add(run(per, c, s, direct, cpu))
			}
		}
		rep.Results = append(rep.Results, d.result("direct", c), r.result("relay", c))
	}
	rep.print(o.Out)
	return rep, nil
}

// sample is what rounds of one mode measured.
type sample struct {
	sent, refused, logins int
	lat                   []time.Duration
	client, endToEnd      time.Duration
	cpu                   time.Duration // both processes, client and stand-in included
}

func (a *sample) add(b sample) {
	a.sent += b.sent
	a.refused += b.refused
	a.logins += b.logins
	a.lat = append(a.lat, b.lat...)
	a.client += b.client
	a.endToEnd += b.endToEnd
	a.cpu += b.cpu
}

func (a *sample) result(mode string, c int) Result {
	r := Result{Mode: mode, Concurrency: c, Messages: a.sent, Refused: a.refused, EndToEnd: a.endToEnd, Logins: a.logins, CPU: a.cpu}
	r.Rate = float64(a.sent-a.refused) / a.client.Seconds()
	sort.Slice(a.lat, func(i, j int) bool { return a.lat[i] < a.lat[j] })
	if len(a.lat) > 0 {
		r.P50, r.P99 = a.lat[len(a.lat)/2], a.lat[min(len(a.lat)-1, len(a.lat)*99/100)]
	}
	return r
}

// run sends n messages from c concurrent clients and waits until the
// stand-in has them.
func run(n, c int, s *upstreamtest.Server, send func() error, cpu func() time.Duration) sample {
	cpu0, start := cpu(), time.Now()
	base, logins := len(s.Messages()), s.Logins()
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
				if err != nil {
					out.refused++
				} else {
					out.lat = append(out.lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	out.client = time.Since(start)
	s.WaitMessages(base+n-out.refused, 2*time.Minute)
	out.endToEnd = time.Since(start)
	out.logins = s.Logins() - logins
	out.cpu = cpu() - cpu0
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

func sendDirect(s *upstreamtest.Server, roots *x509.CertPool, body string) error {
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.StartTLSPort))
	c, err := smtp.DialStartTLS(addr, &tls.Config{RootCAs: roots, ServerName: s.Host})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", s.Username(), s.Password())); err != nil {
		return err
	}
	return transact(c, s.Username(), body)
}

func sendPlain(addr, from, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return transact(c, from, body)
}

func transact(c *smtp.Client, from, body string) error {
	if err := c.SendMail(from, []string{"friend@example.com"}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

type relayProc struct {
	cmd  *exec.Cmd
	addr string
}

func startRelay(ctx context.Context, o Options, s *upstreamtest.Server, dir, ca string) (*relayProc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`[listen]
addr = %q
%s[queue]
dir = %q
[delivery]
sync_window = %q
daily_limit = 0
[log]
level = "warn"
format = "json"
[status]
addr = "127.0.0.1:0"
`, addr, s.UpstreamTOML("", ca), filepath.Join(dir, "queue"), o.SyncWindow)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, o.Binary, "run", "--config", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &relayProc{cmd: cmd, addr: addr}, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("the relay did not start listening on %s", addr)
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

func (rep *Report) print(w io.Writer) {
	fmt.Fprintf(w, "%d CPUs, %s/%s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	if rep.Latency > 0 {
		fmt.Fprintf(w, "; the stand-in's replies arrive %s late (a network round trip)", rep.Latency)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-7s %5s %6s %8s %9s %9s %10s %8s %13s %9s\n", "mode", "conc", "msgs", "msg/s", "p50", "p99", "end-to-end", "refused", "logins/1000", "cpu/msg")
	byKey := map[string]Result{}
	for _, r := range rep.Results {
		byKey[fmt.Sprintf("%s/%d", r.Mode, r.Concurrency)] = r
		fmt.Fprintf(w, "%-7s %5d %6d %8.1f %9s %9s %10s %8d %13.0f %9s\n", r.Mode, r.Concurrency, r.Messages, r.Rate,
			r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), r.EndToEnd.Round(time.Millisecond), r.Refused,
			float64(r.Logins)*1000/float64(max(r.Messages, 1)), (r.CPU / time.Duration(max(r.Messages, 1))).Round(time.Microsecond))
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
	}
	if rep.IdleRSS > 0 {
		fmt.Fprintf(w, "\nrelay idle RSS: %.1f MiB\n", float64(rep.IdleRSS)/(1<<20))
	}
	if rep.BigDone {
		fmt.Fprintf(w, "relay peak RSS growth while relaying one 20 MiB message: %.1f MiB\n", float64(rep.BigGrowth)/(1<<20))
	}
}
