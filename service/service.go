// Package service runs the relay as an OS service through
// kardianos/service (Windows SCM, macOS launchd, Linux systemd), or in the
// foreground when started from a terminal.
//
// Invariants (from kardianos/service's contract): Start does not block and
// Stop returns within StopTimeout; neither calls os.Exit.
package service

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	kservice "github.com/kardianos/service"
)

// Name is the service's name in the OS service manager.
const Name = "icloud-relay"

// StopTimeout bounds a graceful stop: sessions and deliveries in flight get
// this long to finish; the rest stays queued.
const StopTimeout = 20 * time.Second

// Runner is the program: the relay's app.App is one.
type Runner interface {
	Start() error
	Stop(ctx context.Context) error
}

// Config is the service definition; args are what the service manager
// passes to the binary (e.g. run --config FILE).
func Config(args []string) *kservice.Config {
	return &kservice.Config{
		Name:        Name,
		DisplayName: "iCloud Mail relay",
		Description: "Accepts mail from local clients on localhost and forwards it to iCloud Mail.",
		Arguments:   args,
	}
}

// Run runs r until the service manager or a signal (SIGINT, SIGTERM) stops it.
func Run(r Runner) error {
	if !kservice.Interactive() {
		if s, err := kservice.New(&program{r: r}, Config(nil)); err == nil {
			return s.Run()
		}
	}
	if err := r.Start(); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	<-sig
	return stop(r)
}

func stop(r Runner) error {
	ctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
	defer cancel()
	return r.Stop(ctx)
}

// program adapts a Runner to kardianos/service.
type program struct{ r Runner }

func (p *program) Start(kservice.Service) error { return p.r.Start() }
func (p *program) Stop(kservice.Service) error  { return stop(p.r) }
