//go:build linux

package config

import "testing"

func TestLinuxDefaultPaths(t *testing.T) {
	sys := DefaultPaths(false)
	if sys.Config != "/etc/icloud-relay/config.toml" || sys.Queue != "/var/lib/icloud-relay/queue" || sys.Log != "/var/log/icloud-relay/relay.log" {
		t.Fatalf("system paths %+v", sys)
	}
	t.Setenv("HOME", "/home/ann")
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("XDG_STATE_HOME", "")
	usr := DefaultPaths(true)
	if usr.Config != "/home/ann/.config/icloud-relay/config.toml" || usr.Queue != "/home/ann/.local/state/icloud-relay/queue" || usr.Log != "/home/ann/.local/state/icloud-relay/relay.log" {
		t.Fatalf("user paths %+v", usr)
	}
	t.Setenv("XDG_CONFIG_HOME", "/xdg/cfg")
	t.Setenv("XDG_STATE_HOME", "/xdg/state")
	if usr := DefaultPaths(true); usr.Config != "/xdg/cfg/icloud-relay/config.toml" || usr.Queue != "/xdg/state/icloud-relay/queue" {
		t.Fatalf("XDG paths %+v", usr)
	}
}
