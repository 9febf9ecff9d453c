//go:build windows

package private

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/windows"
)

// Restrict gives path a protected DACL: full control for SYSTEM, the
// Administrators, the service's account and the current account,
// inherited by a directory's entries; no other access, nothing inherited
// from above.
func Restrict(path string) error {
	user, err := currentUser()
	if err != nil {
		return err
	}
	dacl, err := privateDACL(user)
	if err != nil {
		return err
	}
	return windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
}

// privateSDDL is the private security descriptor for the account user
// (which may be the service's own).
func privateSDDL(user *windows.SID) string {
	svc := serviceSID(ServiceAccount)
	sddl := "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;" + svc + ")"
	if u := user.String(); u != svc {
		sddl += "(A;OICI;FA;;;" + u + ")"
	}
	return sddl
}

func privateDACL(user *windows.SID) (*windows.ACL, error) {
	sd, err := windows.SecurityDescriptorFromString(privateSDDL(user))
	if err != nil {
		return nil, err
	}
	dacl, _, err := sd.DACL()
	return dacl, err
}

func currentUser() (*windows.SID, error) {
	u, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return nil, err
	}
	return u.User.Sid, nil
}

// Exposed says who besides SYSTEM, the Administrators, the service's
// account, the current account and the file's owner may read path (""
// when nobody).
func Exposed(path string) (string, error) {
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.OWNER_SECURITY_INFORMATION)
	if err != nil {
		return "", err
	}
	user, err := currentUser()
	if err != nil {
		return "", err
	}
	owner, _, _ := sd.Owner()
	return exposedBy(sd, user, owner)
}

// readAccess are the rights that let a principal read a file's content.
const readAccess = windows.FILE_READ_DATA | windows.GENERIC_READ | windows.GENERIC_ALL

// exposedBy names the principals sd lets read that are not SYSTEM, the
// Administrators, the service's account or one of allowed.
func exposedBy(sd *windows.SECURITY_DESCRIPTOR, allowed ...*windows.SID) (string, error) {
	svc, err := windows.StringToSid(serviceSID(ServiceAccount))
	if err != nil {
		return "", err
	}
	allowed = append(allowed, svc)
	dacl, _, err := sd.DACL()
	if err != nil {
		return "", err
	}
	if dacl == nil {
		return "it has no access list at all, so everyone may read it (a NULL DACL)", nil
	}
	var who []string
	for i := uint32(0); i < uint32(dacl.AceCount); i++ {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil {
			return "", err
		}
		if ace.Header.AceType != windows.ACCESS_ALLOWED_ACE_TYPE || ace.Mask&readAccess == 0 {
			continue
		}
		sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
		if sid.IsWellKnown(windows.WinLocalSystemSid) || sid.IsWellKnown(windows.WinBuiltinAdministratorsSid) || sid.IsWellKnown(windows.WinCreatorOwnerSid) {
			continue
		}
		mine := false
		for _, a := range allowed {
			if a != nil && windows.EqualSid(sid, a) {
				mine = true
			}
		}
		if !mine {
			who = append(who, name(sid))
		}
	}
	if len(who) == 0 {
		return "", nil
	}
	return fmt.Sprintf("%s may read it (icloud-relay makes it private when it writes it; or remove them in its Properties → Security)", strings.Join(who, ", ")), nil
}

func name(sid *windows.SID) string {
	if account, domain, _, err := sid.LookupAccount(""); err == nil {
		if domain != "" {
			return domain + `\` + account
		}
		return account
	}
	return sid.String()
}

// Share lets the service's account (NT SERVICE\icloud-relay) read path:
// on Windows that is the private DACL, which grants it.
func Share(path string) error { return Restrict(path) }

// GiveTo lets the service's account own path and everything under it: the
// private DACL on each (a queue made before, by LocalSystem or by hand,
// may have entries of their own that do not name it).
func GiveTo(path string) error {
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return Restrict(p)
	})
}
