//go:build windows

package private

import (
	"strings"
	"testing"

	"golang.org/x/sys/windows"
)

// The private DACL grants SYSTEM, the Administrators, the service's
// account and the current account,
// protected from inheritance, and nothing to anyone else; a DACL that
// lets Everyone or the Users group read is reported, naming them. (Run
// under Wine in CI: Wine accepts a DACL but shows the Unix mode when read
// back, so the DACLs are checked as built.)
func TestPrivateDACL(t *testing.T) {
	user, err := currentUser()
	if err != nil {
		t.Fatal(err)
	}
	sd, err := windows.SecurityDescriptorFromString(privateSDDL(user))
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.String(); !strings.HasPrefix(got, "D:P") || strings.Count(got, "(A;") != 4 || !strings.Contains(got, ";;;"+serviceSID(ServiceAccount)+")") || strings.Contains(got, ";WD)") || strings.Contains(got, ";BU)") {
		t.Fatalf("private descriptor %s", got)
	}
	if who, err := exposedBy(sd, user); err != nil || who != "" {
		t.Fatalf("the private DACL is reported as exposed: %q %v", who, err)
	}
	for _, open := range []string{
		"D:(A;;FA;;;SY)(A;;0x1200a9;;;WD)",
		"D:(A;;FA;;;BA)(A;;FR;;;BU)",
		"D:(A;;GA;;;AU)",
	} {
		sd, err := windows.SecurityDescriptorFromString(open)
		if err != nil {
			t.Fatal(err)
		}
		if who, err := exposedBy(sd, user); err != nil || who == "" {
			t.Errorf("%s: not reported (%q %v)", open, who, err)
		}
	}
	other, _ := windows.CreateWellKnownSid(windows.WinWorldSid)
	if who, _ := exposedBy(mustSD(t, "D:(A;;FR;;;WD)"), user); !strings.Contains(who, "Everyone") && !strings.Contains(who, other.String()) {
		t.Errorf("Everyone not named: %q", who)
	}
}

func mustSD(t *testing.T, sddl string) *windows.SECURITY_DESCRIPTOR {
	t.Helper()
	sd, err := windows.SecurityDescriptorFromString(sddl)
	if err != nil {
		t.Fatal(err)
	}
	return sd
}
