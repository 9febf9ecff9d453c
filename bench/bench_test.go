package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// TestBenchmarkSmoke runs the benchmark briefly, as CI does: it must run end
// to end with no message refused. The figures are not judged here.
func TestBenchmarkSmoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "icloud-relay")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/icloud-relay").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var out, timings bytes.Buffer
	profile := filepath.Join(t.TempDir(), "relay.pprof")
	rep, err := Run(context.Background(), Options{Binary: bin, Concurrency: []int{1, 4}, Messages: 20, Rounds: 2, MessageSize: 4096,
		SyncWindow: "10s", BigMessage: true, CPUProfile: profile, Latencies: &timings, Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if len(rep.Results) != 4 {
		t.Fatalf("results: %+v", rep.Results)
	}
	for _, r := range rep.Results {
		if r.Refused != 0 || r.P50 <= 0 || r.EndToEnd <= 0 {
			t.Fatalf("%s at %d: %+v", r.Mode, r.Concurrency, r)
		}
		if len(r.Rounds) != 2 {
			t.Fatalf("%s at %d: %d rounds timed, want 2", r.Mode, r.Concurrency, len(r.Rounds))
		}
		if r.Mode == "relay" && r.Logins > 2 {
			t.Fatalf("relay logged in %d times for %d messages: no connection reuse", r.Logins, r.Messages)
		}
	}
	if b, err := os.ReadFile(profile); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("the relay's CPU profile (a gzipped pprof protobuf): %v, % x", err, b[:min(len(b), 2)])
	}
	if !strings.Contains(out.String(), "relay / direct") || strings.Count(out.String(), "end to end per round:") != 2 {
		t.Fatal("no ratios, or none per round, printed")
	}
	checkTimings(t, timings.String(), rep)
}

// checkTimings reads Options.Latencies' CSV: a line per message of every
// mode, concurrency and round, whose latencies are the ones the report's
// p50 came from, and whose serial client started each message after the
// one before was answered.
func checkTimings(t *testing.T, text string, rep *Report) {
	t.Helper()
	rows, err := csv.NewReader(strings.NewReader(text)).ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("latencies CSV: %v\n%s", err, text)
	}
	if got := strings.Join(rows[0], ","); got != "mode,concurrency,round,start_us,latency_us,refused" {
		t.Fatalf("latencies header: %s", got)
	}
	type key struct {
		mode     string
		c, round int
	}
	perRun := map[key]int{}
	lat := map[key][]int64{} // round -1: all rounds
	lastEnd := map[key]int64{}
	for _, r := range rows[1:] {
		c, _ := strconv.Atoi(r[1])
		round, _ := strconv.Atoi(r[2])
		start, err1 := strconv.ParseInt(r[3], 10, 64)
		took, err2 := strconv.ParseInt(r[4], 10, 64)
		if err1 != nil || err2 != nil || start < 0 || took <= 0 || r[5] != "0" {
			t.Fatalf("latencies row %v", r)
		}
		k := key{r[0], c, round}
		perRun[k]++
		all := key{r[0], c, -1}
		lat[all] = append(lat[all], took)
		if c == 1 {
			if start < lastEnd[k] {
				t.Fatalf("a serial client's message started at %d µs, before the one before it was answered (%d µs): %v", start, lastEnd[k], r)
			}
			lastEnd[k] = start + took
		}
	}
	for _, mode := range []string{"direct", "relay"} {
		for _, c := range []int{1, 4} {
			for round := 0; round < 2; round++ {
				if n := perRun[key{mode, c, round}]; n != 10 {
					t.Errorf("%s, c=%d, round %d: %d lines, want 10", mode, c, round, n)
				}
			}
		}
	}
	for _, r := range rep.Results {
		l := lat[key{r.Mode, r.Concurrency, -1}]
		slices.Sort(l)
		if len(l) == 0 || l[len(l)/2] != r.P50.Microseconds() {
			t.Errorf("%s, c=%d: the lines' median %v µs, the report's p50 %v", r.Mode, r.Concurrency, l, r.P50)
		}
	}
}

// BenchmarkDelivery is the same comparison for the go test tooling (one op
// is one message, until the stand-in has it; compare direct and relay, e.g.
// with benchstat):
//
//	go test -run '^$' -bench Delivery -benchtime 1000x ./bench/
func BenchmarkDelivery(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "icloud-relay")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/icloud-relay").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	dir := b.TempDir()
	up, err := upstreamFor(Options{}, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer up.close()
	relay, err := startRelay(context.Background(), Options{Binary: bin, SyncWindow: "10s"}, up.toml, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer relay.stop()
	body := message(4096)
	modes := []struct {
		name string
		send func() error
	}{
		{"direct", func() error { return up.sendDirect(body) }},
		{"relay", func() error { return sendPlain(relay.addr, up.from, up.to, body) }},
	}
	for _, c := range []int{1, 8, 32} {
		for _, m := range modes {
			b.Run(fmt.Sprintf("%s/c=%d", m.name, c), func(b *testing.B) {
				smp := run(b.N, c, up.direct, m.send, func() time.Duration { return 0 }, nil)
				r := smp.result(m.name, c)
				b.ReportMetric(float64(r.P50.Microseconds()), "p50-µs")
				if r.Refused > 0 {
					b.Fatalf("%d messages refused", r.Refused)
				}
			})
		}
	}
}

// The bench can measure against an upstream of the user's (--upstream): here
// a stand-in started apart from it, as the independent one would be; what
// the relay delivered is read from its /metrics.
func TestBenchmarkAgainstAnExternalUpstream(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "icloud-relay")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/icloud-relay").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	s, err := upstreamtest.Start(upstreamtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ca, err := s.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := Run(context.Background(), Options{Binary: bin, Concurrency: []int{2}, Messages: 20, MessageSize: 2048, SyncWindow: "10s", Out: &out,
		Upstream: &External{Host: s.Host, StartTLSPort: s.StartTLSPort, TLSPort: s.TLSPort, CAFile: ca, Username: s.Username(), Password: s.Password(), To: "friend@example.com"}})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if got := len(s.Messages()); got != 40 {
		t.Fatalf("the external upstream has %d messages, want 20 direct + 20 relayed", got)
	}
	for _, r := range rep.Results {
		if r.Refused != 0 || r.EndToEnd <= 0 || r.Messages != 20 {
			t.Fatalf("%s: %+v", r.Mode, r)
		}
		if r.Mode == "relay" && (r.Logins < 1 || r.Logins > 2) {
			t.Fatalf("relay: %d logins (from its /metrics), want 1 or 2", r.Logins)
		}
		if r.Mode == "direct" && r.Logins != 20 {
			t.Fatalf("direct: %d logins, want one a message", r.Logins)
		}
	}
}
