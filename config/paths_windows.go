//go:build windows

package config

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/windows"
)

func systemPaths() Paths {
	base := os.Getenv("ProgramData")
	if base == "" {
		base = `C:\ProgramData`
	}
	return windowsPaths(filepath.Join(base, "icloud-relay"))
}

func userPaths() Paths {
	base := os.Getenv("LOCALAPPDATA")
	if base == "" {
		base = homeOr(os.TempDir(), "AppData", "Local")
	}
	return windowsPaths(filepath.Join(base, "icloud-relay"))
}

func windowsPaths(dir string) Paths {
	return Paths{Config: filepath.Join(dir, "config.toml"), Queue: filepath.Join(dir, "queue"), Log: filepath.Join(dir, "logs", "relay.log")}
}

// IsAdmin reports whether the process runs elevated (as Administrator).
func IsAdmin() bool { return windows.GetCurrentProcessToken().IsElevated() }
