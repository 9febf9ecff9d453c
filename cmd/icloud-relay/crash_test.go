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
	s, err := upstreamtest.Start(upstreamtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
