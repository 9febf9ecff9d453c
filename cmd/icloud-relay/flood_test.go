package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// A flood of connections that runs the relay out of file descriptors (any
// local user can do it) must not kill the control API or the listener for
// good: once the flood is over, queue commands and mail work again.
func TestTheRelaySurvivesRunningOutOfFileDescriptors(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		testenv.Skip(t, "prlimit (util-linux) is needed to lower the relay's open-file limit")
	}
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), addr, "")
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(text), "[listen]\n", "[listen]\nmax_connections = 500\nmax_connections_per_client = 500\n", 1)), 0o600)
	p := startCmd(t, exec.Command(prlimit, "--nofile=64:64", binary, "run", "--config", cfg))
	p.waitLog(t, "relay started")
	b, err := os.ReadFile(filepath.Join(dir, "queue", "control.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep struct{ Addr string }
	json.Unmarshal(b, &ep)

	// The flood: connections to both ports, held open, sending nothing.
	var flood []net.Conn
	for i := 0; i < 150; i++ {
		for _, a := range []string{addr, ep.Addr} {
			if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				flood = append(flood, c)
			}
		}
	}
	// Wait until the relay has run out (any accept failing says so).
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(p.output(), "too many open files"); {
		if time.Now().After(deadline) {
			t.Fatalf("the flood did not exhaust the relay's file descriptors:\n%s", p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range flood {
		c.Close()
	}

	// Over: both work again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out := runCLI(t, "queue", "retry", "--all", "--config", cfg)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control API never recovered: exit %d\n%s\nrelay log:\n%s", code, out, p.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := sendTo(addr, "after the flood"); err != nil {
		t.Fatalf("the listener did not recover: %v", err)
	}
	if got := s.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatal("the message sent after the flood was not delivered")
	}
	p.waitLog(t, "control API cannot accept a connection; retrying")
	if n := strings.Count(p.output(), "control API cannot accept a connection"); n > 2 {
		t.Errorf("the flood wrote %d log lines about it, want one a minute", n)
	}
}
