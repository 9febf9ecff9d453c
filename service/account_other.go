//go:build !darwin && !linux

package service

// EnsureAccount does nothing here: on Windows the service manager makes
// the service's virtual account with the service.
func EnsureAccount() error { return nil }
