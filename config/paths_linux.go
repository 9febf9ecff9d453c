//go:build linux

package config

import (
	"os"
	"path/filepath"
)

func systemPaths() Paths {
	return Paths{Config: "/etc/icloud-relay/config.toml", Queue: "/var/lib/icloud-relay/queue", Log: "/var/log/icloud-relay/relay.log"}
}

func userPaths() Paths {
	cfg := os.Getenv("XDG_CONFIG_HOME")
	if cfg == "" {
		cfg = homeOr(os.TempDir(), ".config")
	}
	state := os.Getenv("XDG_STATE_HOME")
	if state == "" {
		state = homeOr(os.TempDir(), ".local", "state")
	}
	return Paths{
		Config: filepath.Join(cfg, "icloud-relay", "config.toml"),
		Queue:  filepath.Join(state, "icloud-relay", "queue"),
		Log:    filepath.Join(state, "icloud-relay", "relay.log"),
	}
}

// IsAdmin reports whether the process may manage system-wide services.
func IsAdmin() bool { return os.Geteuid() == 0 }
