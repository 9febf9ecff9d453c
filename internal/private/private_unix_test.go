//go:build !windows

package private

import (
	"os"
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
