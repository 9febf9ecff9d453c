package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func setupArgs(s *upstreamtest.Server, cfg, ca string) []string {
	return []string{"setup", "--user", "--config", cfg, "--host", s.Host, "--starttls-port", strconv.Itoa(s.StartTLSPort),
		"--tls-port", strconv.Itoa(s.TLSPort), "--ca-file", ca}
}

func checkWritten(t *testing.T, cfg, password string) {
	t.Helper()
	// The config holds no secret: readable by all local users (sendmail as
	// www-data); the password file is the owner's alone.
	for f, want := range map[string]os.FileMode{cfg: 0o644, filepath.Join(filepath.Dir(cfg), "password"): 0o600} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v, mode %v (want %v)", f, err, st.Mode(), want)
		}
	}
	b, _ := os.ReadFile(cfg)
	if strings.Contains(string(b), password) || !strings.Contains(string(b), `username = "demo@icloud.com"`) {
		t.Fatalf("config:\n%s", b)
	}
	pw, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg), "password"))
	if strings.TrimSpace(string(pw)) != password {
		t.Fatal("password file wrong")
	}
}

func TestSetupWithFlags(t *testing.T) {
	s := standIn(t, upstreamtest.Options{Aliases: []string{"alias@icloud.com"}})
	dir := t.TempDir()
	ca, _ := s.WriteCA(dir)
	cfg := filepath.Join(dir, "etc", "config.toml")
	cmd := exec.Command(binary, append(setupArgs(s, cfg, ca), "--address", "demo@icloud.com", "--password-stdin", "--alias", "alias@icloud.com", "--yes")...)
	cmd.Stdin = strings.NewReader(s.Password() + "\n")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "✓ auth") || !strings.Contains(string(out), "✓ sender alias@icloud.com") || !strings.Contains(string(out), "Mail can flow.") {
		t.Fatalf("setup did not run the checks:\n%s", out)
	}
	if strings.Contains(string(out), s.Password()) {
		t.Fatal("setup printed the password")
	}
	checkWritten(t, cfg, s.Password())
	// Without a terminal and without --address, it says what it needs.
	cmd = exec.Command(binary, "setup", "--user", "--config", filepath.Join(dir, "other.toml"))
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--address is required") {
		t.Fatalf("no terminal, no flags: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// ptyScreen collects what the wizard writes to its terminal.
type ptyScreen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (p *ptyScreen) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.Write(b)
}

func (p *ptyScreen) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

func (p *ptyScreen) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		ok := strings.Contains(p.buf.String(), s)
		p.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Fatalf("the wizard never showed %q; screen:\n%s", s, p.buf.String())
}

func TestSetupWizardInATerminal(t *testing.T) {
	// Not the stand-in's default password: the wizard's help text shows that one as the example.
	s := standIn(t, upstreamtest.Options{Password: "wxyz-abcd-efgh-ijkl"})
	dir := t.TempDir()
	ca, _ := s.WriteCA(dir)
	cfg := filepath.Join(dir, "config.toml")
	cmd := exec.Command(binary, setupArgs(s, cfg, ca)...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"))
	tty, err := pty.Start(cmd)
	if err != nil {
		testenv.Skip(t, fmt.Sprintf("no pseudo-terminal: %v", err))
	}
	defer tty.Close()
	screen := &ptyScreen{}
	go io.Copy(screen, tty)

	screen.waitFor(t, "Your iCloud email address:")
	fmt.Fprint(tty, "demo\r") // the name part only: the wizard asks again
	screen.waitFor(t, "Please give the full address")
	fmt.Fprint(tty, "demo@icloud.com\r")
	screen.waitFor(t, "App-specific password (hidden):")
	fmt.Fprint(tty, s.Password()+"\r")
	screen.waitFor(t, "Mail can flow.")
	screen.waitFor(t, "Install the relay as a service")
	fmt.Fprint(tty, "no\r")
	screen.waitFor(t, "To run it now in the foreground")
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d\n%s", code, screen.buf.String())
	}
	if strings.Contains(screen.buf.String(), s.Password()) {
		t.Fatalf("the password was echoed:\n%s", screen.buf.String())
	}
	checkWritten(t, cfg, s.Password())
	if b, _ := os.ReadFile(cfg); !strings.Contains(string(b), filepath.Join(dir, "state")) {
		t.Fatalf("a --user set-up keeps its queue under the user's state directory:\n%s", b)
	}
}

// On a terminal doctor shows each check while it runs.
func TestDoctorShowsProgressOnATerminal(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	cfg := writeConfig(t, s, t.TempDir(), s.Password())
	tty, err := pty.Start(exec.Command(binary, "doctor", "--config", cfg))
	if err != nil {
		testenv.Skip(t, fmt.Sprintf("no pseudo-terminal: %v", err))
	}
	defer tty.Close()
	screen := &ptyScreen{}
	go io.Copy(screen, tty)
	screen.waitFor(t, "Mail can flow.")
	for _, want := range []string{"… checking dns", "\r\033[K", "✓ auth"} {
		if !strings.Contains(screen.String(), want) {
			t.Errorf("screen lacks %q:\n%q", want, screen.String())
		}
	}
}

// The config the .deb and .rpm install is a placeholder: setup replaces it
// without asking, while a config someone wrote is kept unless they say so.
func TestSetupReplacesThePackagedPlaceholder(t *testing.T) {
	dir := t.TempDir()
	placeholder, err := os.ReadFile(filepath.Join("..", "..", "packaging", "linux", "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(cfg string) string {
		cmd := exec.Command(binary, "setup", "--user", "--config", cfg, "--address", "demo@icloud.com", "--password-stdin", "--yes", "--skip-checks")
		cmd.Stdin = strings.NewReader("abcd-efgh-ijkl-mnop\n")
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setup: %v\n%s", err, out)
		}
		return string(out)
	}
	packaged := filepath.Join(dir, "packaged", "config.toml")
	os.MkdirAll(filepath.Dir(packaged), 0o755)
	os.WriteFile(packaged, placeholder, 0o644)
	if out := run(packaged); strings.Contains(out, "Keeping the existing config") {
		t.Fatalf("the placeholder was kept:\n%s", out)
	}
	checkWritten(t, packaged, "abcd-efgh-ijkl-mnop")

	own := filepath.Join(dir, "own", "config.toml")
	os.MkdirAll(filepath.Dir(own), 0o755)
	os.WriteFile(own, []byte("[upstream]\nusername = \"mine@icloud.com\"\n"), 0o644)
	if out := run(own); !strings.Contains(out, "Keeping the existing config") {
		t.Fatalf("a config of the user's was replaced:\n%s", out)
	}
}
