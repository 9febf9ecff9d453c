// Package buildinfo says which build of the relay is running: the release
// version, commit and date a release build stamps in with -ldflags, or,
// for a plain "go build" or "go install …@version", what the Go toolchain
// recorded (the module version, the VCS commit and time). It never answers
// a bare "dev": a build without either says so in words.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by the release build:
//
//	-X github.com/icloud-relay/icloud-relay/internal/buildinfo.version=1.2.3
//	-X …buildinfo.commit=abc123 -X …buildinfo.date=2026-12-02T10:00:00Z
var version, commit, date string

// Info describes one build.
type Info struct {
	Version    string `json:"version"`               // "1.2.3", "v0.0.0-2026…-abcdef", or "devel"
	Commit     string `json:"commit,omitempty"`      // VCS revision, when known
	Date       string `json:"date,omitempty"`        // build date (release builds)
	CommitTime string `json:"commit_time,omitempty"` // the commit's time (go build)
	Modified   bool   `json:"modified,omitempty"`    // built from a work tree with uncommitted changes
	Go         string `json:"go"`
}

// Get returns the running build's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return from(version, commit, date, bi)
}

func from(version, commit, date string, bi *debug.BuildInfo) Info {
	in := Info{Version: strings.TrimPrefix(version, "v"), Commit: commit, Date: date, Go: runtime.Version()}
	if in.Version != "" || bi == nil {
		if in.Version == "" {
			in.Version = "devel"
		}
		return in
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		in.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.time":
			in.CommitTime = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	return in
}

// Short is the version alone, for a log field or a heading: "1.2.3", or
// "devel+abcdef123456" when only the commit is known.
func (in Info) Short() string {
	v := in.Version
	if v == "devel" && in.Commit != "" {
		v += "+" + shortCommit(in.Commit)
		if in.Modified {
			v += "-dirty"
		}
	}
	return v
}

// String is the one line "icloud-relay version" prints.
func (in Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "icloud-relay %s", in.Short())
	var parts []string
	if in.Commit != "" {
		c := "commit " + shortCommit(in.Commit)
		if in.Modified {
			c += " (modified)"
		}
		parts = append(parts, c)
	}
	if in.CommitTime != "" {
		parts = append(parts, "committed "+in.CommitTime)
	}
	if in.Date != "" {
		parts = append(parts, "built "+in.Date)
	}
	if in.Version == "devel" && in.Commit == "" {
		parts = append(parts, "built without version information")
	}
	parts = append(parts, in.Go, runtime.GOOS+"/"+runtime.GOARCH)
	fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	return b.String()
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
