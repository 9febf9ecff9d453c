//go:build !linux && !darwin

package main

// serviceAccount is the account a system service runs as: on Windows the
// service manager's default, LocalSystem, for now.
func serviceAccount(user bool) string { return "" }
