//go:build !windows

package private

import (
	"fmt"
	"os"
)

// Restrict makes path readable and writable by its owner only.
func Restrict(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := os.FileMode(0o600)
	if info.IsDir() {
		mode = 0o700
	}
	if info.Mode().Perm()&^mode == 0 {
		return nil
	}
	return os.Chmod(path, mode)
}

// Exposed says who besides its owner may read path ("" when nobody), and
// what to run about it.
func Exposed(path string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		fix := "chmod 600"
		if info.IsDir() {
			fix = "chmod 700"
		}
		return fmt.Sprintf("its mode %04o lets other users read it (%s %s)", perm, fix, path), nil
	}
	return "", nil
}
