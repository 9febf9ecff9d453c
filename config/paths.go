package config

import (
	"os"
	"path/filepath"
)

// Paths are where a config, the queue and the logs live by default.
type Paths struct {
	Config string
	Queue  string
	Log    string // the log file used under a service manager
}

// DefaultPaths returns the system-wide paths, or with user those of the
// current user (a per-user service, or no administrator rights).
func DefaultPaths(user bool) Paths {
	if user {
		return userPaths()
	}
	return systemPaths()
}

func homeOr(fallback string, elem ...string) string {
	home, err := os.UserHomeDir()
	if err != nil {
		home = fallback
	}
	return filepath.Join(append([]string{home}, elem...)...)
}
