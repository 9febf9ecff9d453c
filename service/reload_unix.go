//go:build !windows

package service

import (
	"os"
	"os/signal"
	"syscall"
)

// watchReload calls Reload on SIGHUP, the Unix way to say "read your config
// again". It returns a function that stops watching.
func watchReload(r Runner) func() {
	rl, ok := r.(Reloader)
	if !ok {
		return func() {}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				rl.Reload()
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(hup); close(done) }
}
