package main

import (
	osuser "os/user"

	"github.com/icloud-relay/icloud-relay/service"
)

// serviceAccount is the account a system service runs as: the packages'
// unprivileged service account when this machine has it, else "" (root).
func serviceAccount(user bool) string {
	if user {
		return ""
	}
	if _, err := osuser.Lookup(service.Account); err != nil {
		return ""
	}
	return service.Account
}
