// Package private keeps files and directories to their owner: the
// password file, a config that holds a password, the queue (everyone's
// mail, and control.json, the token that steers it). On Unix that is the
// mode (0600, 0700). On Windows modes mean nothing, and %ProgramData% lets
// every local user read what is made there: a private path gets an
// explicit, protected DACL instead, granting full control to SYSTEM, the
// Administrators, the service's own account (NT SERVICE\icloud-relay) and
// the account that runs the relay (or installs it), and nothing to anyone
// else; a directory's entries inherit it.
// On Unix a file may also be shared with the service account's group
// (Share): readable by root and the service, by no one else.
package private

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf16"
)

// ServiceAccount is the unprivileged account a system service runs as: a
// user and a group of that name where the packages create one (Linux), a
// file shared with its group (Share) being not exposed; on Windows the
// service's virtual account, NT SERVICE\ServiceAccount, whose SID is
// serviceSID(ServiceAccount).
const ServiceAccount = "icloud-relay"

// serviceSID is the SID Windows gives the service name's virtual account
// (NT SERVICE\name): S-1-5-80 and the SHA-1 of the name in upper case,
// UTF-16LE, as five little-endian sub-authorities. Known before the
// service exists, so that setup can grant it what the service will read.
func serviceSID(name string) string {
	units := utf16.Encode([]rune(strings.ToUpper(name)))
	b := make([]byte, 2*len(units))
	for i, u := range units {
		binary.LittleEndian.PutUint16(b[2*i:], u)
	}
	sum := sha1.Sum(b)
	sid := "S-1-5-80"
	for i := 0; i < 5; i++ {
		sid += fmt.Sprintf("-%d", binary.LittleEndian.Uint32(sum[4*i:]))
	}
	return sid
}
