//go:build !linux && !darwin && !windows

package config

import (
	"os"
	"path/filepath"
)

func systemPaths() Paths {
	return Paths{Config: "/usr/local/etc/icloud-relay/config.toml", Queue: "/var/db/icloud-relay/queue", Log: "/var/log/icloud-relay/relay.log"}
}

func userPaths() Paths {
	dir := homeOr(os.TempDir(), ".icloud-relay")
	return Paths{Config: filepath.Join(dir, "config.toml"), Queue: filepath.Join(dir, "queue"), Log: filepath.Join(dir, "relay.log")}
}

// IsAdmin reports whether the process may manage system-wide services.
func IsAdmin() bool { return os.Geteuid() == 0 }
