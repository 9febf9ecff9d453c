package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// TestThePasswordAppearsNowhere runs the commands and failure paths with a
// known password and looks for it in every output and every queue file.
func TestThePasswordAppearsNowhere(t *testing.T) {
	const secret = "qqqq-seek-rett-pass"
	s, err := upstreamtest.Start(upstreamtest.Options{Password: secret})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
