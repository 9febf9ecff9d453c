//go:build !linux && !darwin && !windows

package main

// serviceAccount is the account a system service runs as: the service
// manager's default.
func serviceAccount(user bool) string { return "" }

// secretReaders says who may read the password a system service uses.
const secretReaders = "root only"

// updateAdvice says how the running relay comes to run this binary.
const updateAdvice = "restart the relay to run it"
