//go:build darwin

package service

// makeAccount makes the account with the directory tool (no package does
// on macOS).
func makeAccount() error {
	return macAccount(func(args ...string) (string, error) {
		return command("/usr/bin/dscl", append([]string{"."}, args...)...)
	})
}
