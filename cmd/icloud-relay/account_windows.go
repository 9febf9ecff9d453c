//go:build windows

package main

import "github.com/icloud-relay/icloud-relay/service"

// serviceAccount is the account a system service runs as: its own virtual
// account, which Windows makes with the service.
func serviceAccount(user bool) string {
	if user {
		return ""
	}
	return service.VirtualAccount
}

// secretReaders says who may read the password a system service uses.
const secretReaders = "SYSTEM, the Administrators and the service's own account only"

// updateAdvice says how the running relay comes to run this binary.
const updateAdvice = "to run it, icloud-relay stop, uninstall, install, start (the service runs its own copy of the binary)"
