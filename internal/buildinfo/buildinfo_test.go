package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestAReleaseBuildSaysItsVersion(t *testing.T) {
	in := from("v1.4.0", "0123456789abcdef0123", "2026-12-02T10:00:00Z", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}})
	if in.Version != "1.4.0" || in.Short() != "1.4.0" {
		t.Fatalf("version %q short %q", in.Version, in.Short())
	}
	if s := in.String(); !strings.HasPrefix(s, "icloud-relay 1.4.0 (commit 0123456789ab, built 2026-12-02T10:00:00Z, go") {
		t.Fatalf("line %q", s)
	}
}

func TestGoInstallSaysTheModuleVersion(t *testing.T) {
	in := from("", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}})
	if in.Short() != "v1.4.0" {
		t.Fatalf("short %q", in.Short())
	}
}

func TestAPlainBuildSaysItsCommit(t *testing.T) {
	in := from("", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "fedcba9876543210"}, {Key: "vcs.time", Value: "2026-12-01T09:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}})
	if in.Short() != "devel+fedcba987654-dirty" {
		t.Fatalf("short %q", in.Short())
	}
	if s := in.String(); !strings.Contains(s, "commit fedcba987654 (modified), committed 2026-12-01T09:00:00Z") {
		t.Fatalf("line %q", s)
	}
}

func TestNoInformationIsSaidInWords(t *testing.T) {
	for _, bi := range []*debug.BuildInfo{nil, {Main: debug.Module{Version: "(devel)"}}} {
		in := from("", "", "", bi)
		if s := in.String(); in.Short() != "devel" || !strings.Contains(s, "built without version information") || strings.Contains(s, " dev ") {
			t.Fatalf("line %q", s)
		}
	}
}
