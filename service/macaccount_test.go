package service

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeDirectory is macOS's local directory as dscl shows it: records
// with attributes, listed and changed through dscl's arguments.
type fakeDirectory struct {
	records map[string]map[string]string // "/Users/root" → UniqueID → "0"
	calls   []string
	failOn  string // a call containing this fails
}

func newFakeDirectory() *fakeDirectory {
	d := &fakeDirectory{records: map[string]map[string]string{}}
	for name, id := range map[string]string{"root": "0", "daemon": "1", "_www": "70", "_postgres": "200", "alice": "501"} {
		d.records["/Users/"+name] = map[string]string{"UniqueID": id, "PrimaryGroupID": id}
	}
	for name, id := range map[string]string{"wheel": "0", "staff": "20", "_www": "70", "_postgres": "201", "admin": "80"} {
		d.records["/Groups/"+name] = map[string]string{"PrimaryGroupID": id}
	}
	return d
}

func (d *fakeDirectory) dscl(args ...string) (string, error) {
	call := strings.Join(args, " ")
	d.calls = append(d.calls, call)
	if d.failOn != "" && strings.Contains(call, d.failOn) {
		return "", errors.New("eDSPermissionError")
	}
	switch args[0] {
	case "-list":
		var b strings.Builder
		for path, attrs := range d.records {
			if name, ok := strings.CutPrefix(path, args[1]+"/"); ok {
				fmt.Fprintf(&b, "%-20s %s\n", name, attrs[args[2]])
			}
		}
		return b.String(), nil
	case "-create":
		if d.records[args[1]] == nil {
			d.records[args[1]] = map[string]string{}
		}
		if len(args) == 4 {
			d.records[args[1]][args[2]] = args[3]
		}
	case "-delete":
		delete(d.records, args[1])
	}
	return "", nil
}

// On macOS install makes the service account when it is missing: a
// hidden user and its group sharing the first ID from 200 that neither
// users nor groups have, no shell, no home, no password; an existing
// account is left alone, an existing group is joined, and a failure
// leaves no half-made user.
func TestTheMacAccountIsMadeOnce(t *testing.T) {
	d := newFakeDirectory()
	if err := macAccount(d.dscl); err != nil {
		t.Fatal(err)
	}
	u, g := d.records["/Users/icloud-relay"], d.records["/Groups/icloud-relay"]
	want := map[string]string{"UniqueID": "202", "PrimaryGroupID": "202", "UserShell": "/usr/bin/false", "NFSHomeDirectory": "/var/empty", "Password": "*", "IsHidden": "1"}
	for k, v := range want {
		if u[k] != v {
			t.Errorf("user %s = %q, want %q", k, u[k], v)
		}
	}
	if g["PrimaryGroupID"] != "202" || g["Password"] != "*" {
		t.Errorf("group %v", g)
	}

	made := len(d.calls)
	if err := macAccount(d.dscl); err != nil || len(d.calls) != made+1 {
		t.Fatalf("a second install changed the directory: %v %v", err, d.calls[made:])
	}

	d = newFakeDirectory()
	d.records["/Groups/icloud-relay"] = map[string]string{"PrimaryGroupID": "250"}
	if err := macAccount(d.dscl); err != nil {
		t.Fatal(err)
	}
	if u := d.records["/Users/icloud-relay"]; u["UniqueID"] != "201" || u["PrimaryGroupID"] != "250" {
		t.Errorf("with its group there already: %v", u)
	}

	d = newFakeDirectory()
	d.failOn = "UserShell"
	err := macAccount(d.dscl)
	if err == nil || !strings.Contains(err.Error(), "UserShell") {
		t.Fatalf("a failing dscl: %v", err)
	}
	if _, ok := d.records["/Users/icloud-relay"]; ok {
		t.Error("a half-made user was left")
	}

	d = newFakeDirectory()
	for id := 200; id < 500; id++ {
		d.records[fmt.Sprintf("/Users/u%d", id)] = map[string]string{"UniqueID": fmt.Sprint(id)}
	}
	if err := macAccount(d.dscl); err == nil || !strings.Contains(err.Error(), "no free user ID") {
		t.Fatalf("no ID free: %v", err)
	}
}
