//go:build windows

package service

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	kservice "github.com/kardianos/service"
	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc/mgr"
)

// VirtualAccount is the account the system service runs as on Windows: the
// service's own virtual account, which Windows makes with the service and
// removes with it (no password, no administrator rights; its SID is what
// the private paths' DACLs grant, see internal/private).
const VirtualAccount = `NT SERVICE\` + Name

// ErrInstalled means the service is installed already.
var ErrInstalled = errors.New("the service is installed already: to install it again (after an update, or with another config) run icloud-relay stop, then icloud-relay uninstall, then install again")

// prepareInstall makes c the service install writes: the system service
// runs as d.Account, from an executable only administrators can change.
func prepareInstall(s kservice.Service, d Definition, c *kservice.Config) error {
	switch _, err := s.Status(); {
	case err == nil:
		return ErrInstalled
	case !errors.Is(err, kservice.ErrNotInstalled):
		return err // e.g. no rights to ask: classify says so
	}
	if d.User {
		return nil
	}
	c.UserName = d.Account
	exe, err := serviceExecutable(d, c.Executable)
	if err != nil {
		return err
	}
	if exe != c.Executable {
		if err := copyExecutable(c.Executable, exe); err != nil {
			return err
		}
		c.Executable = exe
	}
	return nil
}

// serviceExecutable is the file the service d runs for the binary exe:
// exe for a service of the user, else systemExecutable.
func serviceExecutable(d Definition, exe string) (string, error) {
	if d.User {
		return exe, nil
	}
	return systemExecutable(exe)
}

// systemExecutable is the file a system service runs for exe: exe itself
// under Program Files or the Windows directory, where only administrators
// write, else a copy in Program Files\icloud-relay. A service must not run
// a file a user can replace (who would then have its rights at its next
// start), and what Scoop, winget's per-user scope or a download leave in a
// user's profile the service's account cannot even read.
func systemExecutable(exe string) (string, error) {
	programFiles, err := windows.KnownFolderPath(windows.FOLDERID_ProgramFiles, 0)
	if err != nil {
		if programFiles = os.Getenv("ProgramFiles"); programFiles == "" {
			return "", fmt.Errorf("cannot find the Program Files folder: %w", err)
		}
	}
	winDir, _ := windows.KnownFolderPath(windows.FOLDERID_Windows, 0)
	for _, safe := range []string{programFiles, winDir} {
		if within(exe, safe) {
			return exe, nil
		}
	}
	return filepath.Join(programFiles, Name, Name+".exe"), nil
}

// within says whether path lies in the folder dir (Windows: any case).
func within(path, dir string) bool {
	if dir == "" || len(path) <= len(dir) {
		return false
	}
	dir = strings.TrimRight(dir, `\/`)
	return strings.EqualFold(path[:len(dir)], dir) && (path[len(dir)] == '\\' || path[len(dir)] == '/')
}

// copyExecutable puts a copy of src at dst whole or not at all; its
// folder inherits Program Files' access (administrators change, users
// read and run).
func copyExecutable(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("cannot make %s for the service's copy of icloud-relay: %w", filepath.Dir(dst), err)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".new"
	out, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("cannot write the service's copy of icloud-relay: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
		if err != nil && setAside(dst) == nil {
			err = os.Rename(tmp, dst)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot put the service's copy of icloud-relay at %s (does an icloud-relay still run from it? stop it first): %w", dst, err)
	}
	return nil
}

// setAside moves an executable that may still run (Windows lets a running
// program's file be renamed, not removed) out of the way, to be removed at
// the next restart of Windows: its name is free at once for a new copy,
// which a deletion pending on that name would otherwise take at the
// restart.
func setAside(exe string) error {
	aside := fmt.Sprintf("%s.%d.old", exe, time.Now().UnixNano())
	if err := os.Rename(exe, aside); err != nil {
		return err
	}
	if os.Remove(aside) == nil {
		return nil
	}
	p, err := windows.UTF16PtrFromString(aside)
	if err != nil {
		return err
	}
	return windows.MoveFileEx(p, nil, windows.MOVEFILE_DELAY_UNTIL_REBOOT)
}

// prepareUninstall returns what to do once the service is removed: remove
// the copy install made of the binary — only when the service ran that
// copy, never a binary that lay there before — at once or, while the
// service still runs it, at the next restart of Windows (set aside).
func prepareUninstall(d Definition) (after func()) {
	after = func() {}
	exe := Copy(d)
	if exe == "" || !runs(exe) {
		return after
	}
	return func() {
		if err := os.Remove(exe); err != nil && !errors.Is(err, os.ErrNotExist) {
			setAside(exe)
			return
		}
		os.Remove(filepath.Dir(exe)) // only when empty
	}
}

// runs says whether the installed service's command line starts with exe.
func runs(exe string) bool {
	m, err := mgr.Connect()
	if err != nil {
		return false
	}
	defer m.Disconnect()
	s, err := m.OpenService(Name)
	if err != nil {
		return false
	}
	defer s.Close()
	// QueryServiceConfig alone: mgr's Config asks for more (delayed
	// start, …), which not every service manager answers (Wine's).
	var need uint32
	windows.QueryServiceConfig(s.Handle, nil, 0, &need)
	if need == 0 {
		return false
	}
	buf := make([]byte, need)
	c := (*windows.QUERY_SERVICE_CONFIG)(unsafe.Pointer(&buf[0]))
	if err := windows.QueryServiceConfig(s.Handle, c, need, &need); err != nil {
		return false
	}
	path := strings.TrimPrefix(windows.UTF16PtrToString(c.BinaryPathName), `"`)
	return len(path) >= len(exe) && strings.EqualFold(path[:len(exe)], exe)
}
