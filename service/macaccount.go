package service

import (
	"fmt"
	"strconv"
	"strings"
)

// macAccount makes the service account on macOS, where no package does
// (Homebrew cannot, a download does not): a hidden user and group
// "icloud-relay" with one free ID below 500 (Apple's range for system
// accounts; 200 up, clear of Apple's own), no password, no shell, no home.
// dscl runs the macOS directory tool with its arguments after ".", the
// local directory, and returns what it printed. An existing user is kept
// as it is; an existing group is used.
func macAccount(dscl func(args ...string) (string, error)) error {
	users, err := dscl("-list", "/Users", "UniqueID")
	if err != nil {
		return fmt.Errorf("cannot list the users: %w", err)
	}
	uids := dsclIDs(users)
	if _, ok := uids[Account]; ok {
		return nil
	}
	groups, err := dscl("-list", "/Groups", "PrimaryGroupID")
	if err != nil {
		return fmt.Errorf("cannot list the groups: %w", err)
	}
	gids := dsclIDs(groups)
	gid, haveGroup := gids[Account]
	id := freeID(uids, gids, haveGroup)
	if id == 0 {
		return fmt.Errorf("no free user ID between 200 and 499 for the %s account", Account)
	}
	if !haveGroup {
		gid = id
	}
	var steps [][]string
	group := "/Groups/" + Account
	if !haveGroup {
		steps = append(steps,
			[]string{"-create", group},
			[]string{"-create", group, "PrimaryGroupID", strconv.Itoa(gid)},
			[]string{"-create", group, "RealName", "iCloud Mail relay"},
			[]string{"-create", group, "Password", "*"})
	}
	user := "/Users/" + Account
	steps = append(steps,
		[]string{"-create", user},
		[]string{"-create", user, "UniqueID", strconv.Itoa(id)},
		[]string{"-create", user, "PrimaryGroupID", strconv.Itoa(gid)},
		[]string{"-create", user, "UserShell", "/usr/bin/false"},
		[]string{"-create", user, "NFSHomeDirectory", "/var/empty"},
		[]string{"-create", user, "RealName", "iCloud Mail relay"},
		[]string{"-create", user, "Password", "*"},
		[]string{"-create", user, "IsHidden", "1"})
	for _, s := range steps {
		if _, err := dscl(s...); err != nil {
			dscl("-delete", user) // no half-made account: the next install starts afresh
			return fmt.Errorf("cannot make the %s account (dscl . %s): %w", Account, strings.Join(s, " "), err)
		}
	}
	return nil
}

// dsclIDs reads "dscl . -list PATH KEY" output: a name and a number a line.
func dsclIDs(out string) map[string]int {
	ids := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.Atoi(f[1]); err == nil {
			ids[f[0]] = n
		}
	}
	return ids
}

// freeID is the lowest ID from 200 to 499 that no user has and, unless the
// group exists already, no group either (the pair then shares it); 0 when
// there is none.
func freeID(uids, gids map[string]int, haveGroup bool) int {
	used := map[int]bool{}
	for _, n := range uids {
		used[n] = true
	}
	if !haveGroup {
		for _, n := range gids {
			used[n] = true
		}
	}
	for id := 200; id < 500; id++ {
		if !used[id] {
			return id
		}
	}
	return 0
}
