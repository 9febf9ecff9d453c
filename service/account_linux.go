//go:build linux

package service

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// EnsureAccount makes the service account when it is missing (see
// linuxAccount): the .deb and .rpm make it before, a go install or a
// download leaves it to install. Without root it does nothing: installing
// a system unit needs root anyway, and says so.
func EnsureAccount() error {
	if os.Geteuid() != 0 {
		return nil
	}
	return linuxAccount(func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) > 0 {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return err
	}, func(tool string) bool {
		_, err := exec.LookPath(tool)
		return err == nil
	})
}
