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

// Reloader is a Runner that can take up an edited config (on SIGHUP).
type Reloader interface {
	Reload() error
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

// Interactive reports whether the process runs from a terminal rather than
// under a service manager, as far as the OS can tell.
func Interactive() bool { return kservice.Interactive() }

// Run runs r until the service manager or a signal (SIGINT, SIGTERM) stops it.
// managed says it was started by the service manager (the command line
// that install writes says so); otherwise the OS is asked. Under a service
// manager, start, stop and failure also go to the OS's service log
// (Windows event log, syslog) where kardianos/service offers one.
func Run(r Runner, managed bool) error {
	defer watchReload(r)()
	if managed || !kservice.Interactive() {
		p := &program{r: r}
		if s, err := kservice.New(p, Config(nil)); err == nil {
			if sl, err := s.Logger(nil); err == nil {
				p.syslog = sl
			}
			return runManaged(s, p)
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

// program adapts a Runner to kardianos/service. With no Runner it only
// serves to install and control the service.
type program struct {
	r      Runner
	syslog kservice.Logger
}

func (p *program) Start(kservice.Service) error {
	if p.r == nil {
		return nil
	}
	err := p.r.Start()
	if p.syslog != nil {
		if err != nil {
			p.syslog.Errorf("icloud-relay failed to start: %v", err)
		} else {
			p.syslog.Info("icloud-relay started")
		}
	}
	return err
}

func (p *program) Stop(kservice.Service) error {
	if p.r == nil {
		return nil
	}
	err := stop(p.r)
	if p.syslog != nil {
		p.syslog.Info("icloud-relay stopped")
	}
	return err
}
