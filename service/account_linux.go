//go:build linux

package service

import "os/exec"

// makeAccount makes the account as the .deb and .rpm do (a go install or a
// download leaves it to install).
func makeAccount() error {
	return linuxAccount(func(name string, args ...string) error {
		_, err := command(name, args...)
		return err
	}, func(tool string) bool {
		_, err := exec.LookPath(tool)
		return err == nil
	})
}
