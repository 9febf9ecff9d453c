package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/service"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func TestServiceCommandsWithoutAServiceManager(t *testing.T) {
	if p := service.Platform(); p == "linux-systemd" || p == "darwin-launchd" || p == "windows-service" {
		// This test is about machines without one; a real manager is
		// exercised by the platform tests (under Wine for Windows).
		t.Skipf("this machine has a service manager (%s)", p)
	}
	s := standIn(t, upstreamtest.Options{})
	cfg := writeConfig(t, s, t.TempDir(), s.Password())
	_, hadAccount := osuser.Lookup(service.Account)
	for _, action := range []string{"install", "start", "stop", "restart", "uninstall", "status"} {
		code, out := runCLI(t, action, "--config", cfg)
		if code != 1 || !strings.Contains(out, "no service manager found") || !strings.Contains(out, "icloud-relay run --config FILE") {
			t.Errorf("%s: exit %d\n%s", action, code, out)
		}
	}
	if _, err := os.Stat("/etc/init.d/icloud-relay"); err == nil {
		t.Fatal("an init script was written")
	}
	// No account for a service that could not be installed.
	if _, err := osuser.Lookup(service.Account); hadAccount != nil && err == nil {
		t.Fatal("install made the service account without a service manager")
	}
}

func TestSIGHUPReloadsTheConfig(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, "wrong-pass-word-xyz", listen, "")
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	if err := sendTo(listen, "before-reload"); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, logging.EvPaused)

	// A broken edit is refused; the relay keeps running.
	good, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, append(good, []byte("\nbogus_key = 1\n")...), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "config reload refused: the file has errors; the relay keeps running with the old config")

	// The fixed password is taken up without a restart; the queued message goes.
	os.WriteFile(cfg, []byte(strings.Replace(string(good), "wrong-pass-word-xyz", s.Password(), 1)), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "config reloaded")
	if got := s.WaitMessages(1, 20*time.Second); len(got) != 1 || got[0].Subject() != "before-reload" {
		t.Fatalf("after reload: %+v\n%s", got, p.output())
	}
	if err := sendTo(listen, "after-reload"); err != nil {
		t.Fatalf("the reloaded relay does not accept mail: %v", err)
	}
	if got := s.WaitMessages(2, 20*time.Second); len(got) != 2 {
		t.Fatal("nothing delivered after the reload")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// A reload applies all of the config, [log] included, in both directions,
// and keeps what the relay learned about the ports: with 587 blackholed,
// the relay that follows a reload goes straight to 465 instead of waiting
// for 587 again.
func TestReloadAppliesTheLogLevelAndKeepsThePort(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), listen, "")
	text, _ := os.ReadFile(cfg)
	info := strings.Replace(string(text), "level = \"debug\"", "level = \"info\"", 1)
	os.WriteFile(cfg, []byte(info), 0o600)
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	if err := sendTo(listen, "before"); err != nil {
		t.Fatal(err)
	}
	s.WaitMessages(1, 20*time.Second)
	debugLines := func(from int) (n int, fellBack bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.logs[from:] {
			n += strings.Count(l, `"level":"debug"`)
			fellBack = fellBack || strings.Contains(l, "trying port")
		}
		return n, fellBack
	}
	mark := func() int { p.mu.Lock(); defer p.mu.Unlock(); return len(p.logs) }
	if n, _ := debugLines(0); n != 0 {
		t.Fatalf("%d debug lines at level info", n)
	}

	reload := func(level string, reloads int) int {
		os.WriteFile(cfg, []byte(strings.Replace(info, "level = \"info\"", "level = \""+level+"\"", 1)), 0o600)
		from := mark()
		p.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(20 * time.Second); strings.Count(p.output(), `"message":"config reloaded"`) < reloads; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no reload:\n%s", p.output())
			}
		}
		return from
	}
	from := reload("debug", 1)
	if !strings.Contains(p.output(), `"changed":["log"]`) {
		t.Errorf("the reload line does not say what changed:\n%s", p.output())
	}
	if err := sendTo(listen, "after"); err != nil {
		t.Fatal(err)
	}
	s.WaitMessages(2, 20*time.Second)
	n, fellBack := debugLines(from)
	if n == 0 {
		t.Fatal("no debug lines after a reload to level debug")
	}
	if fellBack {
		t.Fatal("after the reload the relay tried 587 again: the remembered port was lost")
	}
	from = reload("info", 2)
	if err := sendTo(listen, "back"); err != nil {
		t.Fatal(err)
	}
	s.WaitMessages(3, 20*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n, _ := debugLines(from); n != 0 {
		t.Fatalf("%d debug lines after a reload back to info", n)
	}
}

// "icloud-relay reload" does what SIGHUP does, through the control API, so
// Windows (no SIGHUP) has it too; with no relay running it says so.
func TestReloadCommand(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "")
	if code, out := runCLI(t, "reload", "--config", cfg); code != 1 || !strings.Contains(out, "no relay is running") {
		t.Fatalf("with no relay: exit %d\n%s", code, out)
	}
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(text), "level = \"debug\"", "level = \"info\"", 1)), 0o600)
	if code, out := runCLI(t, "reload", "--config", cfg); code != 0 {
		t.Fatalf("reload: exit %d\n%s\nrelay log:\n%s", code, out, p.output())
	}
	if l := p.waitLog(t, "config reloaded"); fmt.Sprint(l["changed"]) != "[log]" {
		t.Fatalf("reload line: %v", l)
	}
	// The relay goes on after the reload: a queue command reaches the new one.
	if code, out := runCLI(t, "queue", "retry", "--all", "--config", cfg); code != 0 {
		t.Fatalf("after the reload: %s", out)
	}
}

// With log.file set, each line is written once: to the file, not also to
// standard error (a pipe, the journal), unless log.stderr asks for it.
func TestEachLogLineIsWrittenOnce(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	for _, also := range []bool{false, true} {
		dir := t.TempDir()
		logFile := filepath.Join(dir, "relay.log")
		cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "")
		text, _ := os.ReadFile(cfg)
		os.WriteFile(cfg, []byte(strings.Replace(string(text), "[log]\n", fmt.Sprintf("[log]\nfile = %q\nstderr = %v\n", logFile, also), 1)), 0o600)
		cmd := exec.Command(binary, "run", "--config", cfg)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(logFile); bytes.Contains(b, []byte(`"message":"relay started"`)) {
				break
			}
		}
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		file, _ := os.ReadFile(logFile)
		inFile, onStderr := bytes.Count(file, []byte(`"message":"relay started"`)), strings.Count(stderr.String(), `"message":"relay started"`)
		if want := map[bool]int{false: 0, true: 1}[also]; inFile != 1 || onStderr != want {
			t.Errorf("stderr = %v: the start-up line %d times in the file, %d on stderr; want 1 and %d", also, inFile, onStderr, want)
		}
	}
}
