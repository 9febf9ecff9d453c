//go:build windows

package config

import "testing"

func TestWindowsDefaultPaths(t *testing.T) {
	t.Setenv("ProgramData", `C:\ProgramData`)
	t.Setenv("LOCALAPPDATA", `C:\Users\ann\AppData\Local`)
	if sys := DefaultPaths(false); sys.Config != `C:\ProgramData\icloud-relay\config.toml` || sys.Log != `C:\ProgramData\icloud-relay\logs\relay.log` {
		t.Fatalf("system paths %+v", sys)
	}
	if usr := DefaultPaths(true); usr.Queue != `C:\Users\ann\AppData\Local\icloud-relay\queue` {
		t.Fatalf("user paths %+v", usr)
	}
}
