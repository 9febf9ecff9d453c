//go:build darwin

package config

import "os"

func systemPaths() Paths {
	return Paths{
		Config: "/Library/Application Support/icloud-relay/config.toml",
		Queue:  "/Library/Application Support/icloud-relay/queue",
		Log:    "/Library/Logs/icloud-relay/relay.log",
	}
}

func userPaths() Paths {
	return Paths{
		Config: homeOr(os.TempDir(), "Library", "Application Support", "icloud-relay", "config.toml"),
		Queue:  homeOr(os.TempDir(), "Library", "Application Support", "icloud-relay", "queue"),
		Log:    homeOr(os.TempDir(), "Library", "Logs", "icloud-relay", "relay.log"),
	}
}

// IsAdmin reports whether the process may manage system-wide services.
func IsAdmin() bool { return os.Geteuid() == 0 }
