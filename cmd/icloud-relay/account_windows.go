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
