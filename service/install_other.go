//go:build !windows

package service

import kservice "github.com/kardianos/service"

// prepareInstall leaves c as it is: launchd and systemd name the account
// in the property list and the unit, and run the binary where it is.
func prepareInstall(kservice.Service, Definition, *kservice.Config) error { return nil }

// prepareUninstall has nothing to clean up after the uninstall.
func prepareUninstall(Definition) (after func()) { return func() {} }

// serviceExecutable is the binary the service runs: exe, where it is.
func serviceExecutable(_ Definition, exe string) (string, error) { return exe, nil }
