//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// wine is a Wine prefix of the test's own with the Windows build of the
// relay in it, at C:\relay\icloud-relay.exe.
type wine struct {
	t      *testing.T
	loader string // wine64
	prefix string
	dir    string // C:\relay, as a Linux path
}

// newWine makes the prefix: wineboot, the ProcessPrng shim Go's runtime
// needs (testdata/wine), and the Windows build. It needs Debian's wine64
// and gcc-mingw-w64-x86-64 (.ci/run installs them).
func newWine(t *testing.T) *wine {
	t.Helper()
	loader, err := exec.LookPath("wine64")
	if err != nil {
		loader = "/usr/lib/wine/wine64" // Debian puts it here, off PATH
	}
	gcc, gerr := exec.LookPath("x86_64-w64-mingw32-gcc")
	if _, err := os.Stat(loader); err != nil || gerr != nil {
		testenv.Skip(t, "the Windows test needs Debian's wine64 and gcc-mingw-w64-x86-64")
	}
	w := &wine{t: t, loader: loader}
	t.Cleanup(func() { w.run(filepath.Join(filepath.Dir(loader), "wineserver"), "-k") })
	// Making a prefix failed once in a loaded CI run ("could not load
	// kernel32.dll", exit 53) and never alone: a second, fresh prefix is
	// tried before giving up.
	for try := 1; ; try++ {
		w.prefix = t.TempDir()
		out, code := w.run(loader, "wineboot", "--init")
		if code == 0 {
			break
		}
		if try == 2 {
			t.Fatalf("wineboot: exit %d\n%s", code, out)
		}
		t.Logf("wineboot failed (exit %d), trying a fresh prefix:\n%s", code, out)
		w.run(filepath.Join(filepath.Dir(loader), "wineserver"), "-k")
	}
	w.dir = filepath.Join(w.prefix, "drive_c", "relay")
	// Let the new prefix settle (its first service manager exits), then
	// keep a persistent wineserver: without it Wine ends the service
	// manager and its services as soon as the last ordinary program exits,
	// so a service would live only as long as the command that started it;
	// and a command run while the prefix still settles can start a second
	// service manager, after which services come and go at random.
	wineserver := filepath.Join(filepath.Dir(loader), "wineserver")
	w.run(wineserver, "-w")
	server := exec.Command(wineserver, "-p")
	server.Env = w.env()
	if err := server.Start(); err != nil {
		t.Fatalf("wineserver: %v", err)
	}
	// Before the prefix is removed (cleanups run last first): wineserver -k
	// finds the server by the prefix, and a persistent one left behind
	// would live on after the test.
	t.Cleanup(func() {
		w.run(wineserver, "-k")
		server.Process.Kill()
	})
	go server.Wait()
	dll := filepath.Join(w.prefix, "drive_c", "windows", "system32", "bcryptprimitives.dll")
	if out, err := exec.Command(gcc, "-O2", "-shared", "-o", dll, "testdata/wine/processprng.c", "testdata/wine/bcryptprimitives.def", "-ladvapi32").CombinedOutput(); err != nil {
		t.Fatalf("the ProcessPrng shim: %v\n%s", err, out)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(w.dir, "icloud-relay.exe"), ".")
	build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the Windows build: %v\n%s", err, out)
	}
	return w
}

func (w *wine) env() []string {
	return append(os.Environ(), "WINEPREFIX="+w.prefix, "WINEDEBUG=-all")
}

// winPath is the Windows name of a path under C:\relay.
func (w *wine) winPath(linux string) string {
	rel, err := filepath.Rel(filepath.Join(w.prefix, "drive_c"), linux)
	if err != nil {
		w.t.Fatal(err)
	}
	return `C:\` + strings.ReplaceAll(rel, "/", `\`)
}

// run runs a command in the prefix and returns its output and exit code.
// The output goes through a file, not a pipe: a program the command
// starts (the service manager, a service) keeps its handles, and a pipe
// would never see the end.
func (w *wine) run(name string, args ...string) (string, int) {
	w.t.Helper()
	return w.runIn("", name, args...)
}

// runIn is run with the working directory dir.
func (w *wine) runIn(dir, name string, args ...string) (string, int) {
	w.t.Helper()
	out, err := os.CreateTemp(w.t.TempDir(), "out")
	if err != nil {
		w.t.Fatal(err)
	}
	defer out.Close()
	c := exec.Command(name, args...)
	c.Dir, c.Env, c.Stdout, c.Stderr = dir, w.env(), out, out
	err = c.Run()
	b, _ := os.ReadFile(out.Name())
	if err != nil && c.ProcessState == nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	return string(b), c.ProcessState.ExitCode()
}

// relay runs the relay's Windows build with args, as run does.
func (w *wine) relay(args ...string) (string, int) {
	w.t.Helper()
	return w.run(w.loader, append([]string{filepath.Join(w.dir, "icloud-relay.exe")}, args...)...)
}

// cmd is the relay's Windows build run with args.
func (w *wine) cmd(args ...string) *exec.Cmd {
	c := exec.Command(w.loader, append([]string{filepath.Join(w.dir, "icloud-relay.exe")}, args...)...)
	c.Env = w.env()
	return c
}

// config writes a config for the Windows relay: queue and CA under C:\relay.
func (w *wine) config(s *upstreamtest.Server, listen string) string {
	w.t.Helper()
	ca, err := s.WriteCA(w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	text := fmt.Sprintf(`[listen]
addr = %q
[upstream]
host = %q
starttls_port = %d
tls_port = %d
username = %q
password = %q
ca_file = %q
connect_timeout = "2s"
timeout = "2s"
[queue]
dir = %q
[delivery]
probe_interval = "200ms"
retry_min = "1h"
retry_max = "2h"
sync_window = "0s"
[log]
format = "json"
[status]
addr = "127.0.0.1:0"
`, listen, s.Host, s.StartTLSPort, s.TLSPort, s.Username(), s.Password(), w.winPath(ca), w.winPath(filepath.Join(w.dir, "queue")))
	path := filepath.Join(w.dir, "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return w.winPath(path)
}

// The Windows build, run under Wine against the stand-in on loopback:
// the demo; relaying; a refusal queued on disk under C:\, kept across a
// kill and delivered after the restart; the queue commands.
func TestWindowsBuildUnderWine(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	start := time.Now()
	w := newWine(t)
	t.Logf("prefix, shim and Windows build ready in %s", time.Since(start).Round(time.Millisecond))

	step := time.Now()
	if out, code := w.relay("demo"); code != 0 || !strings.Contains(out, "It works") {
		t.Fatalf("demo under Wine: exit %d\n%s", code, out)
	}
	t.Logf("demo: %s", time.Since(step).Round(time.Millisecond))

	s := standIn(t, upstreamtest.Options{})
	addr := freeAddr(t)
	cfg := w.config(s, addr)
	step = time.Now()
	p := startCmd(t, w.cmd("run", "--config", cfg))
	p.waitLog(t, "relay started")
	if err := sendTo(addr, "from windows"); err != nil {
		t.Fatal(err)
	}
	if got := s.WaitMessages(1, 20*time.Second); len(got) != 1 {
		t.Fatalf("delivered %d, want 1", len(got))
	}
	t.Logf("run and deliver: %s", time.Since(step).Round(time.Millisecond))

	// Refused for now: queued on disk, under C:\relay\queue.
	step = time.Now()
	s.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}})
	if err := sendTo(addr, "queued on windows"); err != nil {
		t.Fatal(err)
	}
	out, code := w.relay("queue", "list", "--json", "--config", cfg)
	var entries []struct {
		ID       string
		Attempts int
	}
	if code != 0 || json.Unmarshal([]byte(out), &entries) != nil || len(entries) != 1 {
		t.Fatalf("queue list under Wine: exit %d\n%s", code, out)
	}
	// The status page and status --json of the Windows relay say so too.
	page, _ := p.waitLog(t, logging.EvStatusPage)["url"].(string)
	if res, err := http.Get(page + "api/status"); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("status page under Wine: %v %v", err, res)
	} else {
		res.Body.Close()
	}
	out, _ = w.relay("status", "--json", "--config", cfg)
	var st struct {
		Running bool
		Queued  int
		State   string
	}
	if json.Unmarshal([]byte(out), &st) != nil || !st.Running || st.Queued != 1 || st.State != "retrying" {
		t.Fatalf("status --json under Wine:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "queue", "active", entries[0].ID+".json")); err != nil {
		t.Fatalf("not on disk: %v", err)
	}
	// Killed, then started again with the upstream back: delivered.
	p.cmd.Process.Kill()
	<-p.done
	s.SetFaults(upstreamtest.Faults{})
	p = startCmd(t, w.cmd("run", "--config", cfg))
	p.waitLog(t, "relay started")
	if got := s.WaitMessages(2, 20*time.Second); len(got) != 2 {
		t.Fatalf("after the restart %d delivered, want 2", len(got))
	}
	if left := waitQueueEmpty(w.dir, 10*time.Second); len(left) != 0 {
		t.Fatalf("left in the queue after delivery: %v", left)
	}
	t.Logf("queued, killed, restarted, delivered: %s", time.Since(step).Round(time.Millisecond))

	// queue retry --all through the running relay's control API: the
	// message would otherwise wait an hour (retry_min).
	step = time.Now()
	s.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}})
	if err := sendTo(addr, "retried on windows"); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "delivery failed; will retry")
	s.SetFaults(upstreamtest.Faults{})
	if out, code := w.relay("queue", "retry", "--all", "--config", cfg); code != 0 {
		t.Fatalf("queue retry --all: exit %d\n%s", code, out)
	}
	if got := s.WaitMessages(3, 20*time.Second); len(got) != 3 {
		t.Fatalf("after retry %d delivered, want 3", len(got))
	}
	t.Logf("queue retry --all: %s", time.Since(step).Round(time.Millisecond))
	// Killed only once the relay has taken it out of the queue: killed
	// between the upstream's reply and that, it would rightly send it again.
	if left := waitQueueEmpty(w.dir, 10*time.Second); len(left) != 0 {
		t.Fatalf("still queued after delivery: %v", left)
	}
	p.cmd.Process.Kill()
	<-p.done

	// As a service, through Wine's service manager: as its own virtual
	// account, running a copy under Program Files (C:\relay is anyone's).
	step = time.Now()
	copied := filepath.Join(w.prefix, "drive_c", "Program Files", "icloud-relay", "icloud-relay.exe")
	out, code = w.relay("install", "--config", cfg)
	if code != 0 || !strings.Contains(out, "Next: icloud-relay start") || !strings.Contains(out, `runs as NT SERVICE\icloud-relay`) ||
		!strings.Contains(out, `binary  C:\Program Files\icloud-relay\icloud-relay.exe`) {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(copied); err != nil {
		t.Fatalf("no copy of the binary under Program Files: %v", err)
	}
	out, _ = w.run(w.loader, "reg", "query", `HKLM\System\CurrentControlSet\Services\icloud-relay`)
	if !strings.Contains(out, `NT SERVICE\icloud-relay`) || !strings.Contains(out, `C:\Program Files\icloud-relay\icloud-relay.exe`) {
		t.Fatalf("the service's account and binary in the registry:\n%s", out)
	}
	if out, code := w.relay("install", "--config", cfg); code == 0 || !strings.Contains(out, "installed already") {
		t.Fatalf("a second install: exit %d\n%s", code, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"start"}, ""},
		{[]string{"status"}, "service: running"},
	} {
		out, code := w.relay(c.args...)
		if (code != 0 && c.args[0] != "status") || !strings.Contains(out, c.want) { // status exits 1 unless running
			t.Fatalf("%v: exit %d\n%s", c.args, code, out)
		}
	}
	if err := sendTo(addr, "through the service"); err != nil {
		t.Fatalf("the service does not take mail: %v", err)
	}
	if got := s.WaitMessages(4, 20*time.Second); len(got) != 4 {
		t.Fatalf("through the service %d delivered, want 4", len(got))
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stop"}, ""},
		{[]string{"status"}, "service: stopped"},
		{[]string{"uninstall"}, "Service removed"},
		{[]string{"status"}, "not installed"},
	} {
		out, code := w.relay(c.args...)
		if (code != 0 && c.args[0] != "status") || !strings.Contains(out, c.want) { // status exits 1 unless running
			t.Fatalf("%v: exit %d\n%s", c.args, code, out)
		}
	}
	if err := sendTo(addr, "after the stop"); err == nil {
		t.Fatal("the relay still takes mail after the service was stopped")
	}
	if _, err := os.Stat(copied); !os.IsNotExist(err) {
		t.Fatalf("uninstall left the copy of the binary: %v", err)
	}
	t.Logf("service install, start, status, deliver, stop, uninstall: %s", time.Since(step).Round(time.Millisecond))

	// A listen address already taken (here by this test) is explained as
	// on Unix: Winsock's error codes are not syscall's.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	out, code = w.relay("run", "--config", w.config(s, taken.Addr().String()))
	if code != 1 || !strings.Contains(out, `"stage":"listen"`) || !strings.Contains(out, "already listens on "+taken.Addr().String()) {
		t.Fatalf("a port in use under Wine: exit %d\n%s", code, out)
	}
	t.Logf("all steps %s", time.Since(start).Round(time.Millisecond))
}

// The packages' own tests, built for Windows and run under Wine: the
// Windows-only code among them (the queue's lock and directory sync, the
// per-OS paths, the service definition, the private DACL) runs where it
// was written for.
// Wine 8 lacks FileDispositionInfoEx, so os.RemoveAll fails there
// ("Invalid function") and every t.TempDir cleanup with it: that one
// message is not counted; any other failure is.
func TestWindowsUnitTestsUnderWine(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	w := newWine(t)
	for _, pkg := range []string{"config", "relay/queue", "service", "internal/private"} {
		exe := filepath.Join(w.dir, strings.ReplaceAll(pkg, "/", "-")+".test.exe")
		build := exec.Command("go", "test", "-c", "-o", exe, "./"+pkg)
		build.Dir = "../.."
		build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", pkg, err, out)
		}
		out, code := w.runIn(filepath.Join("../..", pkg), w.loader, exe, "-test.v", "-test.count=1")
		failed, cleanupOnly := windowsFailures(out)
		if len(failed) > 0 || (code != 0 && cleanupOnly == 0) {
			t.Errorf("%s under Wine (exit %d): %s\n%s", pkg, code, strings.Join(failed, "\n"), out)
			continue
		}
		t.Logf("%s under Wine: %d tests and subtests run, %d failed only at Wine's TempDir cleanup", pkg, strings.Count(out, "=== RUN"), cleanupOnly)
	}
}

// windowsFailures lists the failure lines of the tests that failed in a
// -test.v run, leaving out Wine's TempDir cleanup; cleanupOnly counts the
// tests that failed for that alone.
func windowsFailures(out string) (failed []string, cleanupOnly int) {
	lines := map[string][]string{}
	test := ""
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if name, ok := strings.CutPrefix(t, "=== RUN   "); ok {
			test = name
			continue
		}
		if name, ok := strings.CutPrefix(t, "--- FAIL: "); ok {
			name, _, _ = strings.Cut(name, " ")
			real := 0
			for _, f := range lines[name] {
				if !(strings.Contains(f, "TempDir RemoveAll cleanup") && strings.Contains(f, "Invalid function")) {
					failed = append(failed, name+": "+f)
					real++
				}
			}
			if real == 0 && len(lines[name]) > 0 {
				cleanupOnly++
			}
			continue
		}
		if i := strings.Index(t, ".go:"); i > 0 && !strings.ContainsAny(t[:i], " ") {
			lines[test] = append(lines[test], t)
		}
	}
	return failed, cleanupOnly
}
