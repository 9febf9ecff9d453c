//go:build windows

package relay

import (
	"errors"

	"golang.org/x/sys/windows"
)

// Winsock's own codes: syscall's EADDRINUSE and kin are other numbers there.
func addrInUse(err error) bool    { return errors.Is(err, windows.WSAEADDRINUSE) }
func addrDenied(err error) bool   { return errors.Is(err, windows.WSAEACCES) }
func addrNotLocal(err error) bool { return errors.Is(err, windows.WSAEADDRNOTAVAIL) }
