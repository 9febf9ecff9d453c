package service

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// plist reads the top-level dict of an XML property list: each key to the
// element that follows it (its name, and its strings for an array).
func plist(t *testing.T, doc string) map[string][]string {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(doc))
	out := map[string][]string{}
	var key string
	depth := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("not XML: %v\n%s", err, doc)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			depth++
			switch {
			case depth == 3 && el.Name.Local == "key":
				var k string
				dec.DecodeElement(&k, &el)
				depth--
				key = k
			case depth == 3 && el.Name.Local == "string": // the type, then the value
				var v string
				dec.DecodeElement(&v, &el)
				depth--
				out[key] = append(out[key], "string", v)
			case depth == 3:
				out[key] = append(out[key], el.Name.Local)
			case depth == 4 && el.Name.Local == "string" && key == "ProgramArguments":
				var s string
				dec.DecodeElement(&s, &el)
				depth--
				out[key] = append(out[key], s)
			}
		case xml.EndElement:
			depth--
		}
	}
}

// The launchd property list has what launchd needs to start the relay at
// load and again after a failure, with absolute paths (launchd has no
// working directory of ours; POSIX ones, whatever OS runs the test) and a
// place for standard error.
func TestLaunchdPlist(t *testing.T) {
	exe, cfg := "/usr/local/bin/icloud-relay", "/Library/Application Support/icloud-relay/config & more.toml"
	doc := launchdPlist(exe, []string{"run", "--config", cfg, "--service"}, "/Library/Logs/icloud-relay/launchd.stderr", "")
	p := plist(t, doc)
	if !strings.HasPrefix(doc, `<?xml version="1.0" encoding="UTF-8"?>`) || !strings.Contains(doc, `<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN"`) {
		t.Fatalf("not a property list:\n%s", doc)
	}
	if strings.Contains(doc, "{{") {
		t.Fatal("kardianos/service parses the plist as a template: no braces")
	}
	args := p["ProgramArguments"]
	if len(args) != 6 || args[0] != "array" || !strings.HasPrefix(args[1], "/") || args[2] != "run" || args[4] != cfg || args[5] != "--service" {
		t.Fatalf("ProgramArguments %q", args)
	}
	for key, want := range map[string]string{"Label": "string", "RunAtLoad": "true", "KeepAlive": "dict", "StandardErrorPath": "string"} {
		if got := p[key]; len(got) == 0 || got[0] != want {
			t.Errorf("%s: %v, want <%s>", key, got, want)
		}
	}
}

// A daemon with the service account runs as it (UserName, GroupName); an
// agent, or a daemon without one, names no user.
func TestLaunchdPlistRunsAsTheServiceAccount(t *testing.T) {
	p := plist(t, launchdPlist("/usr/local/bin/icloud-relay", []string{"run"}, "/Library/Logs/icloud-relay/launchd.stderr", Account))
	if u, g := p["UserName"], p["GroupName"]; len(u) != 2 || u[1] != Account || len(g) != 2 || g[1] != Account {
		t.Fatalf("UserName %q GroupName %q", u, g)
	}
	if p := plist(t, launchdPlist("/usr/local/bin/icloud-relay", []string{"run"}, "/tmp/x", "")); len(p["UserName"]) != 0 {
		t.Fatalf("a plist without an account names a user: %q", p["UserName"])
	}
}
