//go:build linux || darwin

package service

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// EnsureAccount makes the service account when it is missing (Linux:
// linuxAccount, macOS: macAccount). Without root it does nothing:
// installing a system service needs root anyway, and says so.
func EnsureAccount() error {
	if os.Geteuid() != 0 {
		return nil
	}
	return makeAccount()
}

// command runs a system tool and returns what it printed; its error
// carries that output.
func command(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) > 0 {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), err
}
