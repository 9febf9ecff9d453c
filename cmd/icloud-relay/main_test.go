package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/logcheck"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

var binary string

// testVersion is stamped into the test binary as a release build does.
const testVersion = "0.0.0-test"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "icloud-relay-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "icloud-relay")
	if out, err := exec.Command("go", "build", "-race", "-ldflags", stampFlags, "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running relay process with its stderr collected.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	done chan struct{}
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(binary, args...))
}

// startCmd is startProc for a command of the caller's (a wrapper such as
// prlimit around the binary).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		var jsonLines []string
		for _, l := range p.logs {
			if strings.HasPrefix(l, "{") {
				jsonLines = append(jsonLines, l)
			}
		}
		for _, err := range logcheck.Lines(strings.Join(jsonLines, "\n")) {
			t.Error(err)
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

// waitLog waits for a JSON log line with the given message and returns it.
func (p *proc) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, l := range p.logs {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["message"] == msg {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no log line %q; output:\n%s", msg, p.output())
	return nil
}

func writeConfig(t *testing.T, s *upstreamtest.Server, dir, password string) string {
	return writeConfigAt(t, s, dir, password, "127.0.0.1:0", "")
}

// standIn starts a stand-in for iCloud, closed when the test ends.
func standIn(t *testing.T, opts upstreamtest.Options) *upstreamtest.Server {
	t.Helper()
	s, err := upstreamtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// writeConfigAt writes a config for a relay on listen; extra is appended.
// An extra that starts with [delivery] replaces the default delivery settings.
func writeConfigAt(t *testing.T, s *upstreamtest.Server, dir, password, listen, extra string) string {
	delivery := "[delivery]\nprobe_interval = \"200ms\"\nsync_window = \"2s\"\n"
	if strings.HasPrefix(extra, "[delivery]") {
		delivery, extra = extra, ""
	}
	t.Helper()
	ca, err := s.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[listen]
addr = %q
%shelo_name = "relay-proc.example"
connect_timeout = "2s"
timeout = "2s"
[queue]
dir = %q
%s[log]
format = "json"
level = "debug"
%s%s
`, listen, s.UpstreamTOML(password, ca), filepath.Join(dir, "queue"), delivery, extra, statusSection(extra))
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func sendTo(addr, subject string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendMail("demo@icloud.com", []string{"friend@example.com"}, strings.NewReader("Subject: "+subject+"\r\n\r\nbody\r\n"))
}

// waitQueueEmpty waits until the relay's queue in dir holds no message and
// returns what is left when the time runs out.
func waitQueueEmpty(dir string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		left, _ := filepath.Glob(filepath.Join(dir, "queue", "active", "*"))
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKilledRelayDeliversEverythingAfterRestart(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	dir := t.TempDir()
	cfg := writeConfig(t, s, dir, s.Password())

	p := startProc(t, "run", "--config", cfg)
	addr := p.waitLog(t, "listening for local mail clients")["addr"].(string)
	const n = 5
	for i := 0; i < n; i++ {
		if err := sendTo(addr, fmt.Sprintf("kill-%d", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	s.SetPort(s.TLSPort, upstreamtest.PortUp)
	p2 := startProc(t, "run", "--config", cfg)
	p2.waitLog(t, "picked up queued messages")
	got := s.WaitMessages(n, 30*time.Second)
	if len(got) != n {
		t.Fatalf("%d of %d delivered after SIGKILL and restart; log:\n%s", len(got), n, p2.output())
	}
	seen := map[string]bool{}
	for _, m := range got {
		if seen[string(m.Data)] {
			t.Fatalf("duplicate delivery: %q", m.Data)
		}
		seen[string(m.Data)] = true
	}
	// Delivered messages leave the queue (the upstream has them before the
	// relay has filed its reply, hence the wait).
	if left := waitQueueEmpty(dir, 10*time.Second); len(left) != 0 {
		t.Fatalf("queue not empty: %v", left)
	}
	p2.cmd.Process.Signal(syscall.SIGTERM)
	<-p2.done
	if code := p2.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0; log:\n%s", code, p2.output())
	}
}

func TestWrongPasswordIsNeverLogged(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	const wrong = "zzzz-wron-gpas-swrd"
	p := startProc(t, "run", "--config", writeConfig(t, s, t.TempDir(), wrong))
	addr := p.waitLog(t, "listening for local mail clients")["addr"].(string)
	if err := sendTo(addr, "secret-check"); err != nil {
		t.Fatal(err)
	}
	l := p.waitLog(t, logging.EvPaused)
	if l["stage"] != "auth" || l["smtp_code"] != 535.0 || l["remedy"] == nil {
		t.Fatalf("auth log line %v", l)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if strings.Contains(p.output(), wrong) {
		t.Fatal("the password appears in the output")
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[upstream]\nusername = \"me@icloud.com\"\npassword = \"x\"\nport = 587\n"), 0o600)
	open := filepath.Join(dir, "open.toml")
	os.WriteFile(open, []byte("[listen]\naddr = \"0.0.0.0:2525\"\n[upstream]\nusername = \"me@icloud.com\"\npassword = \"x\"\n"), 0o600)
	// A queue.dir that cannot be made (a file stands in its way) is a config
	// error too: exit 2, with the file, the line and the key.
	blocker := filepath.Join(dir, "a-file")
	os.WriteFile(blocker, nil, 0o600)
	unusable := filepath.Join(dir, "unusable.toml")
	os.WriteFile(unusable, []byte(fmt.Sprintf("[upstream]\nusername = \"me@icloud.com\"\npassword = \"x\"\n[queue]\ndir = %q\n", filepath.Join(blocker, "queue"))), 0o600)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--config", open}, 2, "open.toml:2: listen.addr: \"0.0.0.0:2525\" is not a loopback address"},
		{[]string{"run", "--config", unusable}, 2, "unusable.toml:5: queue.dir: cannot use"},
		{[]string{"run", "--config", bad}, 2, "bad.toml:4: upstream.port: unknown key"},
		{[]string{"run", "--config", filepath.Join(dir, "missing.toml")}, 2, "cannot read config"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"run", "--nope"}, 2, "flag provided but not defined"},
		{[]string{}, 2, "Usage"},
		{[]string{"run", "--help"}, 0, "Usage: icloud-relay run"},
		{[]string{"version"}, 0, "icloud-relay"},
	}
	for _, c := range cases {
		cmd := exec.Command(binary, c.args...)
		out, _ := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d with %q", c.args, code, out, c.code, c.want)
		}
	}
}

// stampFlags are the release build's -ldflags (.goreleaser.yaml), with a
// test version.
const stampFlags = "-X github.com/icloud-relay/icloud-relay/internal/buildinfo.version=v" + testVersion +
	" -X github.com/icloud-relay/icloud-relay/internal/buildinfo.commit=0123456789abcdef" +
	" -X github.com/icloud-relay/icloud-relay/internal/buildinfo.date=2026-12-02T00:00:00Z"

// The build's version is in version and --version, the start-up log line
// and doctor's report (text and JSON).
func TestTheVersionIsEverywhere(t *testing.T) {
	want := "icloud-relay " + testVersion + " (commit 0123456789ab, built 2026-12-02T00:00:00Z, go"
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(binary, arg).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("%s: %v %q, want %q…", arg, err, out, want)
		}
	}
	s := standIn(t, upstreamtest.Options{})
	cfg := writeConfig(t, s, t.TempDir(), s.Password())
	out, _ := exec.Command(binary, "doctor", "--config", cfg).CombinedOutput()
	if !strings.HasPrefix(string(out), "icloud-relay "+testVersion+", checking "+cfg) {
		t.Errorf("doctor does not open with the version:\n%s", out)
	}
	out, _ = exec.Command(binary, "doctor", "--json", "--config", cfg).Output()
	var rep struct{ Version string }
	if err := json.Unmarshal(out, &rep); err != nil || rep.Version != testVersion {
		t.Errorf("doctor --json version %q (%v)", rep.Version, err)
	}
	p := startProc(t, "run", "--config", cfg)
	if v := p.waitLog(t, "relay started")[logging.KeyVersion]; v != testVersion {
		t.Errorf("start-up line has version %v", v)
	}
	// status says when the running relay is not this binary (an update
	// not yet restarted into), and how to change that.
	out, _ = exec.Command(binary, "status", "--config", cfg).CombinedOutput()
	if !strings.Contains(string(out), "relay:   "+testVersion+" running") || strings.Contains(string(out), "this icloud-relay is") {
		t.Errorf("status from the same binary:\n%s", out)
	}
	newer := filepath.Join(t.TempDir(), "icloud-relay")
	if b, err := exec.Command("go", "build", "-ldflags", strings.ReplaceAll(stampFlags, "version=v"+testVersion, "version=v0.0.1-test"), "-o", newer, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	out, _ = exec.Command(newer, "status", "--config", cfg).CombinedOutput()
	if !strings.Contains(string(out), "relay:   "+testVersion+" running") || !strings.Contains(string(out), "(this icloud-relay is 0.0.1-test: restart the service") {
		t.Errorf("status from a newer binary:\n%s", out)
	}
	out, _ = exec.Command(newer, "status", "--json", "--config", cfg).Output()
	var st struct {
		Version     string
		ThisVersion string `json:"this_version"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.Version != testVersion || st.ThisVersion != "0.0.1-test" {
		t.Errorf("status --json from a newer binary: %+v %v\n%s", st, err, out)
	}
}

func TestDemo(t *testing.T) {
	out, err := exec.Command(binary, "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"stage=connect", "stage=tls", "stage=auth", "stage=data", "delivered", "apart from one added Received trace header: true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), upstreamtest.DefaultPassword) {
		t.Error("demo prints the password")
	}
}

func TestDoctorCommand(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	cfg := writeConfig(t, s, t.TempDir(), s.Password())
	run := func(args ...string) (int, string) {
		cmd := exec.Command(binary, append([]string{"doctor", "--config", cfg}, args...)...)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := run(); code != 0 || !strings.Contains(out, "Mail can flow.") {
		t.Fatalf("healthy: exit %d\n%s", code, out)
	}
	s.SetFaults(upstreamtest.Faults{AuthFail: true})
	code, out := run("--json")
	var rep struct {
		OK    bool
		Steps []struct{ Name, Status, Stage, Remedy string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	failed := ""
	for _, st := range rep.Steps {
		if st.Status == "fail" {
			failed = st.Name
		}
	}
	if code != 1 || rep.OK || failed != "auth" {
		t.Fatalf("auth fault: exit %d, ok %v, failed step %q\n%s", code, rep.OK, failed, out)
	}
	if strings.Contains(out, s.Password()) {
		t.Fatal("doctor printed the password")
	}
}

// doctor --json is JSON in every case: a config that cannot be loaded is
// a failed "config" step (exit 2), not text on stderr.
func TestDoctorJSONOnABadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(bad, []byte("[listen]\nbogus = 1\n"), 0o600)
	cmd := exec.Command(binary, "doctor", "--json", "--config", bad)
	out, _ := cmd.Output()
	var rep struct {
		OK    bool
		Steps []struct{ Name, Status, Detail, Remedy string }
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if code := cmd.ProcessState.ExitCode(); code != 2 || rep.OK || len(rep.Steps) != 1 || rep.Steps[0].Name != "config" ||
		rep.Steps[0].Status != "fail" || !strings.Contains(rep.Steps[0].Detail, "bogus") || rep.Steps[0].Remedy == "" {
		t.Fatalf("exit %d, report %+v", code, rep)
	}
}

// A listen address already taken stops the relay with exit 1 and a line
// that says so and what to do, not a bare "relay failed".
func TestPortInUseIsExplained(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	cfg := writeConfigAt(t, s, dir, upstreamtest.DefaultPassword, ln.Addr().String(), "")
	cmd := exec.Command(binary, "run", "--config", cfg)
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	var line map[string]any
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, `"stage":"listen"`) {
			json.Unmarshal([]byte(l), &line)
		}
	}
	if line == nil || !strings.Contains(fmt.Sprint(line["remedy"]), "already listens on "+ln.Addr().String()) {
		t.Fatalf("no listen failure with the port-in-use remedy:\n%s", out)
	}
	for _, err := range logcheck.Lines(string(out)) {
		t.Error(err)
	}
}

// statusSection gives each test relay a status page of its own (a port
// the OS picks), unless the test sets [status] itself.
func statusSection(extra string) string {
	if strings.Contains(extra, "[status]") {
		return ""
	}
	return "\n[status]\naddr = \"127.0.0.1:0\"\n"
}
