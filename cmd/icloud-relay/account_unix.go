//go:build linux || darwin

package main

import (
	osuser "os/user"

	"github.com/icloud-relay/icloud-relay/service"
)

// serviceAccount is the account a system service runs as: the unprivileged
// service account when this machine has it (the .deb and .rpm make it,
// else install), else "" (root).
func serviceAccount(user bool) string {
	if user {
		return ""
	}
	if _, err := osuser.Lookup(service.Account); err != nil {
		return ""
	}
	return service.Account
}

// secretReaders says who may read the password a system service uses.
const secretReaders = "root and the " + service.Account + " service only"

// updateAdvice says how the running relay comes to run this binary.
const updateAdvice = "restart the service to run it (icloud-relay restart)"
