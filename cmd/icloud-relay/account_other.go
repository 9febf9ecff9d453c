//go:build !linux

package main

// serviceAccount is the account a system service runs as: on Windows and
// macOS the service manager's default (LocalSystem, root) for now.
func serviceAccount(user bool) string { return "" }
