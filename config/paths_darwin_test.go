//go:build darwin

package config

import "testing"

func TestDarwinDefaultPaths(t *testing.T) {
	sys := DefaultPaths(false)
	if sys.Config != "/Library/Application Support/icloud-relay/config.toml" || sys.Log != "/Library/Logs/icloud-relay/relay.log" {
		t.Fatalf("system paths %+v", sys)
	}
	t.Setenv("HOME", "/Users/ann")
	if usr := DefaultPaths(true); usr.Queue != "/Users/ann/Library/Application Support/icloud-relay/queue" || usr.Log != "/Users/ann/Library/Logs/icloud-relay/relay.log" {
		t.Fatalf("user paths %+v", usr)
	}
}
