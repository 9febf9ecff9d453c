//go:build !windows

package private

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
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
	perm := info.Mode().Perm()
	if perm&0o007 == 0 && perm&0o020 == 0 && inServiceGroup(info) {
		return "", nil // read by the service account's group alone (Share)
	}
	if perm&0o077 != 0 {
		fix := "chmod 600"
		if info.IsDir() {
			fix = "chmod 700"
		}
		return fmt.Sprintf("its mode %04o lets other users read it (%s %s)", perm, fix, path), nil
	}
	return "", nil
}

// Share lets the service account's group (ServiceAccount) read path, which
// stays its owner's otherwise: 0640 for a file, 0750 for a directory. The
// password file of a system service that runs as that account needs it.
func Share(path string) error {
	g, err := user.LookupGroup(ServiceAccount)
	if err != nil {
		return fmt.Errorf("no group %s: %w", ServiceAccount, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := os.FileMode(0o640)
	if info.IsDir() {
		mode = 0o750
	}
	if err := os.Chmod(path, mode&0o700); err != nil { // nobody else while the group changes
		return err
	}
	if err := os.Lchown(path, -1, gid); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// GiveTo makes the service account own path and everything under it (the
// queue and logs of a system service that runs as that account, which
// root may have made first).
func GiveTo(path string) error {
	u, err := user.Lookup(ServiceAccount)
	if err != nil {
		return fmt.Errorf("no user %s: %w", ServiceAccount, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func inServiceGroup(info os.FileInfo) bool {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(st.Gid), 10))
	return err == nil && g.Name == ServiceAccount
}
