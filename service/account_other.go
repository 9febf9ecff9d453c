//go:build !darwin

package service

// EnsureAccount does nothing here: on Linux the .deb and .rpm make the
// service account, on Windows the service manager makes its virtual
// account with the service.
func EnsureAccount() error { return nil }
