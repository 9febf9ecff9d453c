package service

import "fmt"

// linuxAccount makes the service account as the .deb and .rpm do
// (packaging/linux/preinstall.sh), for a binary installed another way (go
// install, a download): a system group and user "icloud-relay", no login
// shell, home the queue's parent (not made). An existing user is kept as it
// is; an existing group is used. Without useradd (a minimal system) it does
// nothing: the service then runs as root, in its hardened unit. run runs a
// command and returns its error (an exit status is one).
func linuxAccount(run func(name string, args ...string) error, have func(tool string) bool) error {
	if run("getent", "passwd", Account) == nil {
		return nil
	}
	if !have("useradd") {
		return nil
	}
	if run("getent", "group", Account) != nil {
		if err := run("groupadd", "--system", Account); err != nil {
			return fmt.Errorf("cannot make the %s group (groupadd --system %s): %w", Account, Account, err)
		}
	}
	if err := run("useradd", "--system", "--gid", Account, "--home-dir", "/var/lib/icloud-relay", "--no-create-home",
		"--shell", "/usr/sbin/nologin", "--comment", "iCloud Mail relay", Account); err != nil {
		return fmt.Errorf("cannot make the %s account (useradd --system … %s): %w", Account, Account, err)
	}
	return nil
}
