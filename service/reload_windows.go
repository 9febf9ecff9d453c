//go:build windows

package service

// watchReload does nothing on Windows, which has no SIGHUP: restart the
// service to take up an edited config.
func watchReload(Runner) func() { return func() {} }
