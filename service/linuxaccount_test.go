package service

import (
	"errors"
	"strings"
	"testing"
)

// fakeUsers is /etc/passwd and /etc/group as getent, groupadd and useradd
// see and change them.
type fakeUsers struct {
	users, groups map[string]bool
	calls         []string
	fail          string // a command containing this fails
}

func (f *fakeUsers) run(name string, args ...string) error {
	call := name + " " + strings.Join(args, " ")
	f.calls = append(f.calls, call)
	if f.fail != "" && strings.Contains(call, f.fail) {
		return errors.New("exit status 1")
	}
	last := args[len(args)-1]
	switch name {
	case "getent":
		if (args[0] == "passwd" && f.users[last]) || (args[0] == "group" && f.groups[last]) {
			return nil
		}
		return errors.New("exit status 2")
	case "groupadd":
		f.groups[last] = true
	case "useradd":
		if !f.groups[args[2]] {
			return errors.New("useradd: group does not exist")
		}
		f.users[last] = true
	}
	return nil
}

// A binary installed without the packages makes the account they make: a
// system group, then a system user in it with no login; an existing
// account is left alone, an existing group used; without useradd nothing
// is made; a failure names the command.
func TestTheLinuxAccountIsMadeOnce(t *testing.T) {
	have := func(string) bool { return true }
	f := &fakeUsers{users: map[string]bool{"root": true}, groups: map[string]bool{"root": true}}
	if err := linuxAccount(f.run, have); err != nil {
		t.Fatal(err)
	}
	if !f.users[Account] || !f.groups[Account] {
		t.Fatalf("made %v %v", f.users, f.groups)
	}
	want := []string{"getent passwd icloud-relay", "getent group icloud-relay", "groupadd --system icloud-relay",
		"useradd --system --gid icloud-relay --home-dir /var/lib/icloud-relay --no-create-home --shell /usr/sbin/nologin --comment iCloud Mail relay icloud-relay"}
	if strings.Join(f.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}

	f.calls = nil
	if err := linuxAccount(f.run, have); err != nil || len(f.calls) != 1 {
		t.Fatalf("a second install: %v %v", err, f.calls)
	}

	f = &fakeUsers{users: map[string]bool{}, groups: map[string]bool{Account: true}}
	if err := linuxAccount(f.run, have); err != nil || !f.users[Account] || strings.Contains(strings.Join(f.calls, " "), "groupadd") {
		t.Fatalf("with the group there: %v %v", err, f.calls)
	}

	f = &fakeUsers{users: map[string]bool{}, groups: map[string]bool{}}
	if err := linuxAccount(f.run, func(string) bool { return false }); err != nil || f.users[Account] || len(f.calls) != 1 {
		t.Fatalf("without useradd: %v %v", err, f.calls)
	}

	f = &fakeUsers{users: map[string]bool{}, groups: map[string]bool{}, fail: "useradd"}
	if err := linuxAccount(f.run, have); err == nil || !strings.Contains(err.Error(), "useradd --system") {
		t.Fatalf("a failing useradd: %v", err)
	}
}
