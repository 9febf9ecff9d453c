//go:build !windows

package private

import (
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

func TestRestrictAndExposed(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "secret")
	os.WriteFile(f, []byte("x"), 0o644)
	if who, err := Exposed(f); err != nil || !strings.Contains(who, "chmod 600") {
		t.Fatalf("a 0644 file: %q %v", who, err)
	}
	if err := Restrict(f); err != nil {
		t.Fatal(err)
	}
	if who, err := Exposed(f); err != nil || who != "" {
		t.Fatalf("after Restrict: %q %v", who, err)
	}
	os.Chmod(dir, 0o755)
	if err := Restrict(dir); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %o", info.Mode().Perm())
	}
}

// A file shared with the service account's group is not exposed; the same
// mode with another group is. (Needs the group: the .deb creates it, and
// the release check in CI runs this test after installing it.)
func TestSharedWithTheServiceGroup(t *testing.T) {
	if _, err := user.LookupGroup(ServiceAccount); err != nil {
		t.Skipf("no %s group on this machine (installing the .deb creates it)", ServiceAccount)
	}
	if os.Geteuid() != 0 {
		t.Skip("changing a file's group to the service's needs root")
	}
	f := filepath.Join(t.TempDir(), "password")
	os.WriteFile(f, []byte("x"), 0o600)
	if err := Share(f); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(f); info.Mode().Perm() != 0o640 {
		t.Fatalf("mode %o after Share", info.Mode().Perm())
	}
	if who, err := Exposed(f); err != nil || who != "" {
		t.Fatalf("shared with the service group: %q %v", who, err)
	}
	os.Chown(f, -1, 0)
	if who, _ := Exposed(f); !strings.Contains(who, "other users") {
		t.Fatalf("0640 with group root: %q", who)
	}
}
