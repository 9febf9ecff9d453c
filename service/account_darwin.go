//go:build darwin

package service

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// EnsureAccount makes the service account when it is missing (macOS, see
// macAccount). Without root it does nothing: installing a daemon needs
// root anyway, and says so.
func EnsureAccount() error {
	if os.Geteuid() != 0 {
		return nil
	}
	return macAccount(func(args ...string) (string, error) {
		out, err := exec.Command("/usr/bin/dscl", append([]string{"."}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return string(out), nil
	})
}
