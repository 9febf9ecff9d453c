package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

var (
	plainOnce   sync.Once
	plainBinary string
	plainErr    error
)

// plainBuild is the relay built as users get it, without the race
// detector, whose shadow memory would swamp a memory measurement.
func plainBuild(t *testing.T) string {
	t.Helper()
	plainOnce.Do(func() {
		plainBinary = filepath.Join(filepath.Dir(binary), "icloud-relay-plain")
		cmd := exec.Command("go", "build", "-o", plainBinary, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainBinary
}

// statusKB reads a field (VmRSS, VmHWM) of /proc/PID/status in KiB.
func statusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// Memory per connection is bounded whatever a client sends: ten clients
// at once each upload a 19 MiB message that is one single line, in BDAT
// chunks of 1,000 bytes (the line limit is off in BDAT, and the header
// fix-up used to read the whole "line" into memory: ~75 MB a connection).
func TestTenSingleLineBDATUploadsKeepMemoryBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		testenv.Skip(t, "reads /proc")
	}
	plain := plainBuild(t)
	s := standIn(t, upstreamtest.Options{})
	// iCloud is busy: every message stays queued, nothing is held upstream.
	s.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy"}})
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), addr, "")
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(text), "level = \"debug\"", "level = \"info\"", 1)), 0o600)
	p := startCmd(t, exec.Command(plain, "run", "--config", cfg))
	p.waitLog(t, "relay started")
	pid := p.cmd.Process.Pid
	if err := sendTo(addr, "warm-up"); err != nil {
		t.Fatal(err)
	}
	before := statusKB(t, pid, "VmRSS")

	const clients, size, chunk = 10, 19 << 20, 1000
	var wg sync.WaitGroup
	replies := make([]string, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			replies[i] = bdatUpload(addr, size, chunk)
		}(i)
	}
	wg.Wait()
	peak := statusKB(t, pid, "VmHWM")
	for i, r := range replies {
		if !strings.HasPrefix(r, "250 ") {
			t.Errorf("upload %d: %q", i, r)
		}
	}
	grew := (peak - before) / 1024
	t.Logf("relay RSS %d MiB before, peak %d MiB during %d concurrent %d MiB single-line BDAT uploads", before/1024, peak/1024, clients, size>>20)
	if grew > 32 {
		t.Fatalf("the relay's memory grew by %d MiB for %d uploads (bound: 32 MiB)", grew, clients)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.json")); len(left) != clients+1 {
		t.Fatalf("%d messages queued, want %d", len(left), clients+1)
	}
	// What was queued can be delivered: no line is longer than servers take.
	emls, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*.eml"))
	for _, name := range emls {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			if len(sc.Bytes()) > 999 {
				t.Fatalf("%s has a %d-byte line", name, len(sc.Bytes()))
			}
		}
		if sc.Err() != nil {
			t.Fatalf("%s: %v", name, sc.Err())
		}
		f.Close()
	}
}

// bdatUpload sends one message of size bytes of "x" without a line break,
// in BDAT chunks, and returns the final reply.
func bdatUpload(addr string, size, chunk int) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	r := bufio.NewReader(c)
	final := make(chan string, 1)
	go func() {
		n := 0
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				final <- "connection ended: " + err.Error()
				return
			}
			if len(l) < 4 || l[3] != ' ' {
				continue // inside a multi-line reply
			}
			// The greeting, EHLO, MAIL and RCPT come first, then a
			// "Continue" per chunk but the last.
			if n++; n > 4 && !strings.Contains(l, "Continue") {
				final <- strings.TrimSpace(l)
				return
			}
		}
	}()
	w := bufio.NewWriterSize(c, 64<<10)
	fmt.Fprintf(w, "EHLO client.test\r\nMAIL FROM:<demo@icloud.com>\r\nRCPT TO:<friend@example.com>\r\n")
	w.Flush()
	time.Sleep(100 * time.Millisecond) // the replies to EHLO, MAIL and RCPT first
	body := []byte(strings.Repeat("x", chunk))
	for sent := 0; sent < size; sent += chunk {
		n := min(chunk, size-sent)
		last := ""
		if sent+n == size {
			last = " LAST"
		}
		fmt.Fprintf(w, "BDAT %d%s\r\n", n, last)
		if _, err := w.Write(body[:n]); err != nil {
			return err.Error()
		}
	}
	w.Flush()
	return <-final
}
