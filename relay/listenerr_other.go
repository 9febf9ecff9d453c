//go:build !windows

package relay

import (
	"errors"
	"syscall"
)

func addrInUse(err error) bool    { return errors.Is(err, syscall.EADDRINUSE) }
func addrDenied(err error) bool   { return errors.Is(err, syscall.EACCES) }
func addrNotLocal(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }
