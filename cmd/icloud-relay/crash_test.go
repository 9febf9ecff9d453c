package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

var soak = flag.Bool("soak", false, "run the crash test longer (many more kills and messages)")

// TestKillLoopLosesNothing kills the relay with SIGKILL at random moments
// while clients send and the upstream fails at random, restarts it each
// time, and checks that every message that got a 250 was delivered.
func TestKillLoopLosesNothing(t *testing.T) {
	kills, clients := 10, 4
	if *soak {
		kills, clients = 50, 4
	}
	s := standIn(t, upstreamtest.Options{})
	s.SetFaults(upstreamtest.Faults{TempFailRate: 0.2, DropRate: 0.05})
	dir := t.TempDir()
	addr := freeAddr(t)
	// Runs alternate: without a sync window (queued at once) and with one
	// (staged while the first attempt runs, committed if it fails).
	config := func(k int) string {
		return writeConfigAt(t, s, dir, s.Password(), addr, fmt.Sprintf(`[delivery]
retry_min = "100ms"
retry_max = "500ms"
probe_interval = "100ms"
sync_window = %q
`, []string{"0s", "2s"}[k%2]))
	}
	var mu sync.Mutex
	accepted := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				token := fmt.Sprintf("c%d-m%d", c, i)
				if sendTo(addr, token) == nil {
					mu.Lock()
					accepted[token] = true
					mu.Unlock()
					time.Sleep(10 * time.Millisecond) // spread the load over the kills
				} else {
					i-- // the relay is down: try the same message again
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(c)
	}
	start := time.Now()
	for k := 0; k < kills; k++ {
		p := startProc(t, "run", "--config", config(k))
		p.waitLog(t, "listening for local mail clients")
		time.Sleep(time.Duration(150+rand.IntN(500)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if strings.Contains(p.output(), "DATA RACE") {
			t.Fatalf("race:\n%s", p.output())
		}
	}
	close(stop)
	wg.Wait()
	// A last start, with a healthy upstream, drains the queue.
	s.SetFaults(upstreamtest.Faults{})
	p := startProc(t, "run", "--config", config(kills))
	p.waitLog(t, "listening for local mail clients")
	waitQueueEmpty(dir, 60*time.Second)
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done

	delivered := map[string]int{}
	for _, m := range s.Messages() {
		delivered[m.Subject()]++
	}
	lost, dups := 0, 0
	for token := range accepted {
		if delivered[token] == 0 {
			lost++
			t.Errorf("%s got a 250 but was never delivered", token)
		}
	}
	for _, n := range delivered {
		dups += n - 1
	}
	t.Logf("messages accepted %d, kills %d, lost %d, duplicates %d (upstream hang-ups after data %d), time %s",
		len(accepted), kills, lost, dups, s.Drops(), time.Since(start).Round(time.Second))
	// A duplicate needs an ambiguous moment: a hang-up after the data, or a
	// kill between the upstream's 250 and the queue removal (or the
	// client's 250): at most a batch per worker per kill.
	const inFlight = 2 * 8 // delivery.workers × messages per batch
	if dups > s.Drops()+inFlight*kills {
		t.Errorf("%d duplicates, more than the %d ambiguous moments", dups, s.Drops()+inFlight*kills)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "queue", "tmp")); len(tmp) != 0 {
		t.Errorf("temp files left after recovery: %v", tmp)
	}
	if orphans, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.eml")); len(orphans) != 0 {
		t.Errorf("orphaned data files: %v", orphans)
	}
	var failed []json.RawMessage
	if code, out := runCLI(t, "queue", "failed", "--config", config(kills), "--json"); code != 0 || json.Unmarshal([]byte(out), &failed) != nil || len(failed) != 0 {
		t.Errorf("failed area: %s", out)
	}
}

// TestKillsWhileABacklogDrains queues a backlog while iCloud is
// unreachable, then kills the relay again and again while it drains it. A
// delivered message leaves the queue as soon as its reply is read, so a
// kill re-sends only what iCloud had accepted and the relay had not yet
// read: nothing is lost, and duplicates stay few (logged for the record).
func TestKillsWhileABacklogDrains(t *testing.T) {
	backlog, kills, latency := 200, 10, time.Duration(0)
	if *soak {
		// iCloud a network away: the drain lasts over many kills.
		backlog, kills, latency = 300, 25, 5*time.Millisecond
	}
	s := standIn(t, upstreamtest.Options{Latency: latency})
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), addr, "[delivery]\nretry_min = \"100ms\"\nretry_max = \"500ms\"\nprobe_interval = \"100ms\"\nsync_window = \"0s\"\n")
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	for i := 0; i < backlog; i++ {
		if err := sendTo(addr, fmt.Sprintf("backlog-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	s.SetPort(s.TLSPort, upstreamtest.PortUp)

	done := 0
	for ; done < kills; done++ {
		p := startProc(t, "run", "--config", cfg)
		p.waitLog(t, "listening for local mail clients")
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if left, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.json")); len(left) == 0 {
			done++
			break
		}
	}
	p = startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	if left := waitQueueEmpty(dir, 60*time.Second); len(left) > 0 {
		t.Fatalf("%d files left in the queue", len(left))
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done

	delivered := map[string]int{}
	for _, m := range s.Messages() {
		delivered[m.Subject()]++
	}
	dups := 0
	for i := 0; i < backlog; i++ {
		n := delivered[fmt.Sprintf("backlog-%d", i)]
		if n == 0 {
			t.Errorf("backlog-%d was never delivered", i)
		}
		dups += max(n-1, 0)
	}
	t.Logf("backlog %d, kills while draining %d, lost 0, duplicates %d (%.2f a kill)", backlog, done, dups, float64(dups)/float64(max(done, 1)))
	if bound := done * 2 * 8; dups > bound { // at most a batch per worker per kill
		t.Errorf("%d duplicates, more than a batch per worker per kill (%d)", dups, bound)
	}
}
