//go:build !windows

package testenv

// UnderWine reports a Windows build running under Wine: never, here.
func UnderWine() bool { return false }
