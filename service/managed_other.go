//go:build !windows

package service

import kservice "github.com/kardianos/service"

// runManaged runs p under launchd or systemd: kardianos/service starts it
// and stops it on SIGTERM.
func runManaged(s kservice.Service, p *program) error { return s.Run() }
