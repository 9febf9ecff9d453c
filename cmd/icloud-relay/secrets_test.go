package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// TestThePasswordAppearsNowhere runs the commands and failure paths with a
// known password and looks for it in every output and every queue file.
func TestThePasswordAppearsNowhere(t *testing.T) {
	const secret = "qqqq-seek-rett-pass"
	s := standIn(t, upstreamtest.Options{Password: secret})
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, secret, listen, "")
	var outputs []string
	run := func(stdin string, args ...string) {
		cmd := exec.Command(binary, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, _ := cmd.CombinedOutput()
		outputs = append(outputs, strings.Join(args, " ")+"\n"+string(out))
	}

	// The relay with every kind of upstream trouble, and a message for each.
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	for _, f := range []upstreamtest.Faults{{AuthFail: true}, {BadCert: true}, {DropAfterData: true}, {}} {
		s.SetFaults(f)
		run("Subject: secret check\n\nbody\n", "sendmail", "--config", cfg, "friend@example.com")
		run("", "queue", "retry", "--all", "--config", cfg)
		run("", "doctor", "--config", cfg)
		run("", "doctor", "--config", cfg, "--json", "--send-test", "friend@example.com")
	}
	run("", "queue", "list", "--config", cfg, "--json")
	run("", "queue", "failed", "--config", cfg, "--json")
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	outputs = append(outputs, p.output())

	// Offline paths and a config error in a file that holds the password.
	run("Subject: offline\n\nbody\n", "sendmail", "--config", cfg, "friend@example.com")
	bad := filepath.Join(dir, "bad.toml")
	b, _ := os.ReadFile(cfg)
	os.WriteFile(bad, append(b, []byte("\n[upstream2]\nx = 1\n")...), 0o600)
	run("", "run", "--config", bad)
	run("", "doctor", "--config", bad)

	for _, out := range outputs {
		if strings.Contains(out, secret) {
			t.Fatalf("the password appears in output:\n%s", out)
		}
	}
	filepath.Walk(filepath.Join(dir, "queue"), func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			if data, _ := os.ReadFile(path); bytes.Contains(data, []byte(secret)) {
				t.Errorf("the password is in %s", path)
			}
		}
		return nil
	})
	if len(outputs) < 15 {
		t.Fatalf("only %d outputs checked", len(outputs))
	}
}

// An upstream reply that echoes the login (some servers quote what they
// were sent) must not carry the password into the log, the queue's files,
// the queue commands' or doctor's output, in any form it can take: as it
// is, base64 (AUTH LOGIN) or inside an AUTH PLAIN response. After a reload
// with a new password, the new one is masked too.
func TestAnEchoedPasswordIsMaskedEverywhere(t *testing.T) {
	const first, second = "echo-first-pass-0001", "echo-second-pass-0002"
	s := standIn(t, upstreamtest.Options{Password: first})
	forms := func(pass string) []string {
		return []string{pass, base64.StdEncoding.EncodeToString([]byte(pass)),
			base64.StdEncoding.EncodeToString([]byte("\x00" + s.Username() + "\x00" + pass))}
	}
	echo := func(pass string) {
		f := forms(pass)
		s.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: "try later; you sent AUTH PLAIN " + f[2] + " (" + f[1] + ", " + f[0] + ")"}})
	}
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, first, listen, "")
	var outputs []string
	run := func(args ...string) string {
		_, out := runCLI(t, args...)
		outputs = append(outputs, strings.Join(args, " ")+"\n"+out)
		return out
	}

	echo(first)
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	if err := sendTo(listen, "echo"); err != nil {
		t.Fatal(err)
	}
	entries := queueJSON(t, cfg, "list")
	if len(entries) != 1 || entries[0].LastError == nil {
		t.Fatalf("queue: %+v", entries)
	}
	run("queue", "list", "--config", cfg, "--json")
	run("queue", "show", entries[0].ID, "--config", cfg)
	run("queue", "show", entries[0].ID, "--config", cfg, "--json")
	run("doctor", "--config", cfg, "--send-test", "friend@example.com")
	if out := run("doctor", "--config", cfg, "--json", "--send-test", "friend@example.com"); !strings.Contains(out, "try later") {
		t.Fatalf("doctor did not get the echoing reply:\n%s", out)
	}

	// A new app-specific password, taken up by SIGHUP.
	s.SetPassword(second)
	echo(second)
	b, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(b), first, second, 1)), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "config reloaded")
	run("queue", "retry", "--all", "--config", cfg)
	for deadline := time.Now().Add(20 * time.Second); strings.Count(p.output(), "try later") < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("no attempt after the reload:\n%s", p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	run("queue", "show", entries[0].ID, "--config", cfg, "--json")
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	outputs = append(outputs, p.output())

	for _, pass := range []string{first, second} {
		for _, f := range forms(pass) {
			for _, out := range outputs {
				if strings.Contains(out, f) {
					t.Errorf("%q appears in output:\n%s", f, out)
				}
			}
			filepath.Walk(filepath.Join(dir, "queue"), func(path string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() && !strings.HasSuffix(path, ".toml") {
					if data, _ := os.ReadFile(path); bytes.Contains(data, []byte(f)) {
						t.Errorf("%q is in %s", f, path)
					}
				}
				return nil
			})
		}
	}
}

// A password in the credential store of whoever runs setup is out of reach
// of a system service: setup and install refuse the combination at once,
// rather than install a service that fails to start.
func TestAKeyringPasswordIsRefusedForASystemService(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("[upstream]\nusername = \"demo@icloud.com\"\npassword_keyring = true\n[queue]\ndir = \""+filepath.ToSlash(filepath.Join(dir, "queue"))+"\"\n"), 0o644)
	code, out := runCLI(t, "install", "--config", cfg)
	if code != 2 || !strings.Contains(out, "a system service cannot read") || !strings.Contains(out, "--user") {
		t.Errorf("install: exit %d\n%s", code, out)
	}
	other := filepath.Join(dir, "setup.toml")
	cmd := exec.Command(binary, "setup", "--config", other, "--keyring", "--install", "--address", "demo@icloud.com", "--password-stdin", "--yes", "--skip-checks")
	cmd.Stdin = strings.NewReader("abcd-efgh-ijkl-mnop\n")
	b, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(b), "a system service cannot read") {
		t.Errorf("setup --keyring --install: exit %d\n%s", cmd.ProcessState.ExitCode(), b)
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("setup wrote a config it then could not use")
	}
}
