package app_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// The program as the service manager drives it: start, deliver, stop
// gracefully with mail queued, start again, and the queued mail goes.
func TestProgramLifecycle(t *testing.T) {
	// Each message waits for its attempt (no bulk rule): the second must
	// still be queued, not in the middle of a delivery, when the program
	// stops.
	e := newEnv(t, `bulk_gap = "0s"`)
	e.stop()
	red := e.cfg.Redactor()
	p, err := app.NewProgram(e.cfg.Path, e.cfg, func(*config.Config) (zerolog.Logger, io.Closer, error) {
		return logging.New(logging.Options{Level: "debug", Format: "json", Redactor: red}, e.logs)
	}, red)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	addr := listenAddr(t, e)
	if _, err := send(addr, "demo@icloud.com", []string{"friend@example.com"}, message("first", "x\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatal("not delivered")
	}
	s := e.standin
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	if _, err := send(addr, "demo@icloud.com", []string{"friend@example.com"}, message("queued", "x\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	s.SetPort(s.TLSPort, upstreamtest.PortUp)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if got := s.WaitMessages(2, 15*time.Second); len(got) != 2 || got[1].Subject() != "queued" {
		t.Fatalf("after restart: %d messages", len(got))
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// listenAddr finds the address the relay logged it listens on.
func listenAddr(t *testing.T, e *env) string {
	t.Helper()
	var addr string
	waitFor(t, 5*time.Second, func() bool {
		l := e.logs.lines(map[string]any{"message": "listening for local mail clients"})
		if len(l) == 0 {
			return false
		}
		addr = l[len(l)-1]["addr"].(string)
		return true
	})
	return addr
}
