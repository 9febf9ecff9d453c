//go:build unix

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// openUp lets other users reach path: it and the directories above it up
// to the temporary directory's root get the x (and r) bits.
func openUp(t *testing.T, path string) {
	t.Helper()
	for p := path; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		if st, err := os.Stat(p); err == nil {
			os.Chmod(p, st.Mode().Perm()|0o055)
		}
	}
}

// The commonest scripted senders run as other users than the relay: PHP as
// www-data, a user's cron. They submit with sendmail through the running
// relay without the iCloud secret: they cannot read the owner-only
// password file, and the password variable is not set for them.
func TestSendmailNeedsNoSecret(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "dropping privileges to another user needs root")
	}
	s := standIn(t, upstreamtest.Options{})
	for _, source := range []string{"password_file", "password_env"} {
		t.Run(source, func(t *testing.T) {
			dir := t.TempDir()
			listen := freeAddr(t)
			cfg := writeConfigAt(t, s, dir, s.Password(), listen, "")
			text, _ := os.ReadFile(cfg)
			secret := filepath.Join(dir, "icloud-password")
			os.WriteFile(secret, []byte(s.Password()+"\n"), 0o600)
			inline := "password = \"" + s.Password() + "\""
			if !strings.Contains(string(text), inline) {
				t.Fatalf("config without the inline password:\n%s", text)
			}
			relayEnv := os.Environ()
			if source == "password_file" {
				text = []byte(strings.Replace(string(text), inline, "password_file = \""+secret+"\"", 1))
			} else {
				text = []byte(strings.Replace(string(text), inline, "password_env = \"ICLOUD_APP_PASSWORD\"", 1))
				relayEnv = append(relayEnv, "ICLOUD_APP_PASSWORD="+s.Password())
			}
			os.WriteFile(cfg, text, 0o644) // no secret in it: readable by all, like Postfix's main.cf
			openUp(t, cfg)
			openUp(t, binary)
			relay := exec.Command(binary, "run", "--config", cfg)
			relay.Env = relayEnv
			p := startCmd(t, relay)
			p.waitLog(t, "listening for local mail clients")

			before := len(s.Messages())
			cmd := exec.Command(binary, "sendmail", "--config", cfg, "-t")
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"} // no ICLOUD_APP_PASSWORD
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			cmd.Stdin = strings.NewReader("To: friend@example.com\nFrom: demo@icloud.com\nSubject: from nobody via " + source + "\n\nhello\n")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("sendmail as nobody: %v\n%s", err, out)
			}
			if got := s.WaitMessages(before+1, 20*time.Second); len(got) != before+1 || got[before].Subject() != "from nobody via "+source {
				t.Fatalf("not delivered: %v", got)
			}
		})
	}
}
