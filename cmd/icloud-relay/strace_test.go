//go:build linux

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// killTraced kills the relay of the queue in dir (strace, killed, would
// leave it running) by the process ID its control endpoint names.
func killTraced(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "queue", "control.json"))
	if err != nil {
		return
	}
	var ep struct{ PID int }
	if json.Unmarshal(b, &ep) == nil && ep.PID > 0 {
		syscall.Kill(ep.PID, syscall.SIGKILL)
	}
}

// syscalls is an strace log, one call a line, in the order the calls
// completed: a call that strace split in two (another thread's call came
// in between) is joined where it ended, except a write, which is kept
// where it began (what matters of a reply is when it started to go out).
// Failed calls are left out.
type syscalls []string

var resumed = regexp.MustCompile(`^(\d+) +<\.\.\. \w+ resumed>`)

func readStrace(t *testing.T, path string) syscalls {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out syscalls
	started := map[string]string{} // pid → the first half of a split call
	for _, l := range strings.Split(string(b), "\n") {
		if before, ok := strings.CutSuffix(l, " <unfinished ...>"); ok {
			pid := strings.Fields(l + " x")[0]
			started[pid] = before
			if strings.Contains(l, " write(") {
				out = append(out, before)
			}
			continue
		}
		if m := resumed.FindStringSubmatch(l); m != nil {
			first, ok := started[m[1]]
			delete(started, m[1])
			if !ok || strings.Contains(first, " write(") {
				continue
			}
			l = first + strings.TrimPrefix(l, m[0])
		}
		if !strings.Contains(l, "= -1") {
			out = append(out, l)
		}
	}
	return out
}

// find is the first call at or after from that matches every regexp.
func (s syscalls) find(from int, patterns ...string) int {
next:
	for i := from; i < len(s); i++ {
		for _, p := range patterns {
			if !regexp.MustCompile(p).MatchString(s[i]) {
				continue next
			}
		}
		return i
	}
	return -1
}

// order fails unless each step is found after the one before, and the last
// before end (when end >= 0).
func (s syscalls) order(t *testing.T, what string, end int, steps ...[]string) {
	t.Helper()
	at := 0
	for _, st := range steps {
		i := s.find(at, st...)
		if i < 0 || end >= 0 && i > end {
			t.Fatalf("%s: no %v after call %d (and before %d):\n%s", what, st, at, end, strings.Join(s, "\n"))
		}
		at = i + 1
	}
}

// The durability promise seen from outside, in the real binary's system
// calls: before the client is written its "250 Queued", the message's
// data is fsynced, its metadata renamed into active/ and the directory
// fsynced; a delivered message's metadata is unlinked before its data; a
// refused message reaches failed/ durably before it leaves active/.
func TestSyscallsKeepTheDurabilityOrder(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		testenv.Skip(t, "strace is needed to watch the relay's system calls")
	}
	plain := plainBuild(t)
	for _, window := range []string{"0s", "2s"} {
		t.Run("sync_window="+window, func(t *testing.T) {
			s := standIn(t, upstreamtest.Options{})
			s.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy"}})
			dir := t.TempDir()
			addr := freeAddr(t)
			cfg := writeConfigAt(t, s, dir, s.Password(), addr, "[delivery]\nprobe_interval = \"200ms\"\nretry_min = \"1h\"\nretry_max = \"1h\"\nsync_window = \""+window+"\"\n")
			trace := filepath.Join(dir, "strace.log")
			p := startCmd(t, exec.Command(strace, "-f", "-qq", "-y", "-s", "256", "-o", trace,
				"-e", "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,write",
				plain, "run", "--config", cfg))
			p.waitLog(t, "relay started")
			t.Cleanup(func() { killTraced(t, dir) }) // strace leaves its tracee running when killed
			if err := sendTo(addr, "durable"); err != nil {
				t.Fatal(err)
			}
			ids, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.json"))
			if len(ids) != 1 {
				t.Fatalf("%d queued", len(ids))
			}
			id := strings.TrimSuffix(filepath.Base(ids[0]), ".json")

			// Delivered: iCloud takes it now.
			s.SetFaults(upstreamtest.Faults{})
			if code, out := runCLI(t, "queue", "retry", id, "--config", cfg); code != 0 {
				t.Fatalf("retry: %s", out)
			}
			if left := waitQueueEmpty(dir, 20*time.Second); len(left) > 0 {
				t.Fatalf("not delivered: %v", left)
			}
			// Refused for good: to the failed area.
			s.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy"}})
			if err := sendTo(addr, "refused"); err != nil {
				t.Fatal(err)
			}
			ids, _ = filepath.Glob(filepath.Join(dir, "queue", "active", "*.json"))
			if len(ids) != 1 {
				t.Fatalf("%d queued", len(ids))
			}
			failed := strings.TrimSuffix(filepath.Base(ids[0]), ".json")
			s.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "refused"}})
			runCLI(t, "queue", "retry", failed, "--config", cfg)
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if _, err := os.Stat(filepath.Join(dir, "queue", "failed", failed+".json")); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the refused message never reached the failed area")
				}
			}
			time.Sleep(200 * time.Millisecond)
			killTraced(t, dir)
			<-p.done

			calls := readStrace(t, trace)
			reply := calls.find(0, `write\(\d+<(TCP|socket)`, `250 2\.0\.0 Queued as `+id)
			if reply < 0 {
				t.Fatalf("no 250 for %s to the client in the trace:\n%s", id, strings.Join(calls, "\n"))
			}
			// The data and the metadata are synced at once (two threads),
			// each before the rename.
			rename := []string{`rename`, `/tmp/` + id + `\.json-\d+"`, `/active/` + id + `\.json"`}
			for _, synced := range []string{`/active/` + id + `\.eml`, `/tmp/` + id + `\.json-\d+`} {
				calls.order(t, "before the 250", reply,
					[]string{`^\d+ +fsync\(\d+<[^>]*` + synced + `>\)`},
					rename,
					[]string{`^\d+ +fsync\(\d+<[^>]*/active>\)`})
			}
			calls.order(t, "removal after delivery", -1,
				[]string{`unlink`, `/active/` + id + `\.json"`},
				[]string{`unlink`, `/active/` + id + `\.eml"`})
			calls.order(t, "move to the failed area", -1,
				[]string{`rename`, `/active/` + failed + `\.eml"`, `/failed/` + failed + `\.eml"`},
				[]string{`rename`, `/tmp/` + failed + `\.json-\d+"`, `/failed/` + failed + `\.json"`},
				[]string{`^\d+ +fsync\(\d+<[^>]*/failed>\)`},
				[]string{`unlink`, `/active/` + failed + `\.json"`})
		})
	}
}
