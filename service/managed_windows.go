//go:build windows

package service

import (
	kservice "github.com/kardianos/service"
	"golang.org/x/sys/windows/svc"
)

// runManaged serves the Windows service control manager itself:
// kardianos/service decides for itself whether the process is a service
// (svc.IsWindowsService), a guess that fails under Wine, and then never
// reports "running", so that the manager gives up on the start ("Service
// request timeout") while the relay runs on unmanaged.
func runManaged(_ kservice.Service, p *program) error {
	return svc.Run(Name, &handler{p: p})
}

type handler struct{ p *program }

// Execute reports the start at once (Start does not block), then waits
// for stop or shutdown; a failed start is exit code 1, which makes the
// manager apply the restart-on-failure the service was installed with.
func (h *handler) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	if err := h.p.Start(nil); err != nil {
		return true, 1
	}
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
	for c := range req {
		switch c.Cmd {
		case svc.Interrogate:
			status <- c.CurrentStatus
		case svc.Stop, svc.Shutdown:
			status <- svc.Status{State: svc.StopPending}
			if err := h.p.Stop(nil); err != nil {
				return true, 2
			}
			return false, 0
		}
	}
	return false, 0
}
