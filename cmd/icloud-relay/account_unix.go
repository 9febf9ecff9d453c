//go:build linux || darwin

package main

import (
	osuser "os/user"

	"github.com/icloud-relay/icloud-relay/service"
)

// serviceAccount is the account a system service runs as: the unprivileged
// service account when this machine has it (the .deb and .rpm make it on
// Linux; on macOS an administrator may), else "" (root).
func serviceAccount(user bool) string {
	if user {
		return ""
	}
	if _, err := osuser.Lookup(service.Account); err != nil {
		return ""
	}
	return service.Account
}
