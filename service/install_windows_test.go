//go:build windows

package service

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/windows"
)

// A system service runs a binary only administrators can change: one
// under Program Files or the Windows directory as it is, any other (a
// user's profile, C:\tools) through a copy under Program Files; a service
// of the user runs its binary where it is.
func TestTheServiceRunsABinaryOnlyAdministratorsChange(t *testing.T) {
	programFiles, err := windows.KnownFolderPath(windows.FOLDERID_ProgramFiles, 0)
	if err != nil {
		t.Fatal(err)
	}
	winDir, err := windows.KnownFolderPath(windows.FOLDERID_Windows, 0)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(programFiles, "icloud-relay", "icloud-relay.exe")
	for exe, want := range map[string]string{
		filepath.Join(programFiles, "icloud-relay", "icloud-relay.exe"): "",
		filepath.Join(programFiles, "Other", "bin", "icloud-relay.exe"): "",
		filepath.Join(winDir, "icloud-relay.exe"):                       "",
		`C:\Users\ann\scoop\apps\icloud-relay\current\icloud-relay.exe`: copied,
		`C:\tools\icloud-relay.exe`:                                     copied,
		programFiles + "X\\icloud-relay.exe":                            copied, // not a folder of it
	} {
		if want == "" {
			want = exe
		}
		if got, err := serviceExecutable(Definition{}, exe); err != nil || got != want {
			t.Errorf("system service for %s: %s %v, want %s", exe, got, err, want)
		}
		if got, _ := serviceExecutable(Definition{User: true}, exe); got != exe {
			t.Errorf("user service for %s: %s", exe, got)
		}
	}
}

// A binary set aside frees its name at once and leaves nothing behind when
// nothing runs it.
func TestSetAside(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "icloud-relay.exe")
	if err := os.WriteFile(exe, []byte("MZ"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := setAside(exe); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}
