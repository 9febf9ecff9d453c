//go:build linux

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// inNoNetwork runs the binary with args in a network namespace of its own
// with only loopback: a machine with no network at all. Nothing can leave
// it, so the real upstream name is safe to use.
func inNoNetwork(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "creating a network namespace needs root")
	}
	if err := exec.Command("unshare", "-n", "true").Run(); err != nil {
		testenv.Skip(t, "cannot create a network namespace (unshare -n): "+err.Error())
	}
	return exec.Command("unshare", append([]string{"-n", "sh", "-c", `ip link set lo up && exec "$@"`, "sh", binary}, args...)...)
}

// No network at all is told apart from a failing name server: the
// advice says to connect the machine, in the relay's log and in doctor.
func TestNoNetworkIsToldApartFromDNS(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	cfg := writeConfig(t, s, dir, s.Password())
	text, _ := os.ReadFile(cfg)
	text = regexp.MustCompile(`(?m)^host = .*$`).ReplaceAll(text, []byte(`host = "smtp.mail.me.com"`))
	os.WriteFile(cfg, text, 0o600)

	out, _ := inNoNetwork(t, "doctor", "--json", "--config", cfg).Output()
	var rep struct {
		Steps []struct{ Name, Status, Stage, Class, Remedy string }
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	var dns struct{ Name, Status, Stage, Class, Remedy string }
	for _, st := range rep.Steps {
		if st.Name == "dns" {
			dns = st
		}
	}
	if dns.Status != "fail" || dns.Class != "unreachable" || !strings.Contains(dns.Remedy, "no network connection") {
		t.Fatalf("doctor's dns step without a network: %+v\n%s", dns, out)
	}

	// A message queued while the relay is down, then the relay started
	// with no network: its log says so, with the same advice.
	send := exec.Command(binary, "sendmail", "--config", cfg, "-f", "demo@icloud.com", "friend@example.com")
	send.Stdin = strings.NewReader("Subject: offline\n\nx\n")
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("sendmail: %v\n%s", err, out)
	}
	p := startCmd(t, inNoNetwork(t, "run", "--config", cfg))
	l := p.waitLog(t, logging.EvUnreachable)
	if l["stage"] != "dns" || l["class"] != "unreachable" || !strings.Contains(l["remedy"].(string), "no network connection") {
		t.Fatalf("the relay's line without a network: %v", l)
	}
}
