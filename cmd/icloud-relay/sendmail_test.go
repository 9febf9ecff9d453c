package main

import (
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// sendmailEnv runs a relay and offers the binary under the name sendmail.
func sendmailEnv(t *testing.T) (s *upstreamtest.Server, sendmail string, env []string) {
	t.Helper()
	s, err := upstreamtest.Start(upstreamtest.Options{Aliases: []string{"alias@icloud.com"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "[sender]\naliases = [\"alias@icloud.com\"]\n")
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "listening for local mail clients")
	sendmail = filepath.Join(dir, "sendmail")
	if err := os.Symlink(binary, sendmail); err != nil {
		t.Fatal(err)
	}
	return s, sendmail, append(os.Environ(), "ICLOUD_RELAY_CONFIG="+cfg)
}

func TestSendmailWithHeadersDotsAndSender(t *testing.T) {
	s, sendmail, env := sendmailEnv(t)
	run := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.Command(sendmail, args...)
		cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sendmail %v: %v\n%s", args, err, out)
		}
	}
	run("From: Me <demo@icloud.com>\nTo: a@example.com\nCc: b@example.com\nBcc: secret@example.com\nSubject: with -t\n\nline\n.\n..two\nend\n", "-t", "-i")
	run("Subject: plain\n\nbody\n.\nignored after the dot\n", "-f", "alias@icloud.com", "-F", "Nightly Job", "c@example.com")
	got := s.WaitMessages(2, 20*time.Second)
	if len(got) != 2 {
		t.Fatalf("stand-in got %d messages", len(got))
	}
	first, second := got[0], got[1]
	if strings.Join(first.To, ",") != "a@example.com,b@example.com,secret@example.com" || first.From != "demo@icloud.com" {
		t.Fatalf("-t envelope: %s -> %v", first.From, first.To)
	}
	if want := "From: Me <demo@icloud.com>\r\nTo: a@example.com\r\nCc: b@example.com\r\nSubject: with -t\r\n\r\nline\r\n.\r\n..two\r\nend\r\n"; withoutAdded(first.Data) != want {
		t.Fatalf("-t data:\n%q\nwant\n%q", first.Data, want)
	}
	if second.From != "alias@icloud.com" || strings.Join(second.To, ",") != "c@example.com" {
		t.Fatalf("-f envelope: %s -> %v", second.From, second.To)
	}
	if want := "Subject: plain\r\nFrom: \"Nightly Job\" <alias@icloud.com>\r\n\r\nbody\r\n"; withoutAdded(second.Data) != want {
		t.Fatalf("-f/-F data:\n%q\nwant\n%q", second.Data, want)
	}
}

// addedByRelay matches the Date and Message-ID headers the relay adds to a
// message that lacks them, at the end of the header block.
var addedByRelay = regexp.MustCompile(`Date: [^\r]+\r\nMessage-ID: <\d{14}\.[0-9a-f]{12}@[^>]+>\r\n\r\n`)

// withoutAdded strips the documented additions: trace, Date, Message-ID.
func withoutAdded(data []byte) string {
	return addedByRelay.ReplaceAllString(upstreamtest.StripTrace(data), "\r\n")
}

func TestMailxThroughSendmail(t *testing.T) {
	mailx, err := exec.LookPath("mail")
	if err != nil {
		testenv.Skip(t, "mail (bsd-mailx) is not installed (.ci/run installs it)")
	}
	s, sendmail, env := sendmailEnv(t)
	rc := filepath.Join(t.TempDir(), "mailrc")
	os.WriteFile(rc, []byte("set sendmail="+sendmail+"\n"), 0o600)
	cmd := exec.Command(mailx, "-s", "from mailx", "friend@example.com")
	cmd.Env = append(env, "MAILRC="+rc, "HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader("Hello from mail(1).\n.dot line\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mail: %v\n%s", err, out)
	}
	got := s.WaitMessages(1, 20*time.Second)
	if len(got) != 1 {
		t.Fatal("nothing arrived from mailx")
	}
	data := string(got[0].Data)
	if !strings.Contains(data, "Subject: from mailx\r\n") || !strings.Contains(data, "\r\n\r\nHello from mail(1).\r\n.dot line\r\n") ||
		strings.Join(got[0].To, ",") != "friend@example.com" || got[0].From != "demo@icloud.com" {
		t.Fatalf("mailx message: %s -> %v\n%q", got[0].From, got[0].To, data)
	}
}

// PHP's mail() and scripts pipe messages with long lines (an HTML body on
// one line, no MIME headers) into sendmail: they must be delivered, in a
// form a strict server takes, with their text intact, and sendmail must
// exit 0 (it exited 75, and the mail was retried for ever).
func TestSendmailDeliversALongLineIntact(t *testing.T) {
	s, sendmail, env := sendmailEnv(t)
	line := "<p>" + strings.Repeat("a long line from PHP ", 200) + "</p>"
	cmd := exec.Command(sendmail, "-t", "-i")
	cmd.Env = env
	cmd.Stdin = strings.NewReader("To: friend@example.com\nFrom: demo@icloud.com\nSubject: php\n\n" + line + "\nend\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail: %v\n%s", err, out)
	}
	got := s.WaitMessages(1, 20*time.Second)
	if len(got) != 1 {
		t.Fatal("not delivered")
	}
	m, err := mail.ReadMessage(strings.NewReader(string(got[0].Data)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Fatalf("headers: %v", m.Header)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil || string(body) != line+"\r\nend\r\n" {
		t.Fatalf("the text changed: %q, %v", body, err)
	}
}

// symfonyBS drives "sendmail -bs" the way Symfony Mailer's (and Laravel's)
// sendmail transport does: SMTP over the subprocess's pipes, line by line,
// each reply read before the next command.
const symfonyBS = `
import subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def reply(want):
    while True:
        line = p.stdout.readline().decode()
        if not line.startswith(want):
            sys.exit("expected %s, got %r" % (want, line))
        if line[3:4] != "-":
            return line
def cmd(c, want):
    p.stdin.write((c + "\r\n").encode()); p.stdin.flush()
    return reply(want)
reply("220")
cmd("EHLO [127.0.0.1]", "250")
cmd("MAIL FROM:<demo@icloud.com>", "250")
cmd("RCPT TO:<friend@example.com>", "250")
cmd("DATA", "354")
body = "From: demo@icloud.com\r\nTo: friend@example.com\r\nSubject: symfony -bs\r\n\r\n.a dot line\r\nbye\r\n"
p.stdin.write(("".join("." + l if l.startswith(".") else l for l in body.splitlines(True)) + ".\r\n").encode()); p.stdin.flush()
print(reply("250").strip())
cmd("QUIT", "221")
p.stdin.close()
sys.exit(p.wait())
`

func TestSendmailBSAsSymfonyDrivesIt(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		testenv.Skip(t, "python3 drives sendmail -bs as Symfony does")
	}
	for _, users := range []bool{false, true} {
		t.Run(fmt.Sprintf("listen.users=%v", users), func(t *testing.T) {
			s := standIn(t, upstreamtest.Options{})
			dir := t.TempDir()
			cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "")
			if users {
				// A relay that wants a login: -bs logs in for the caller.
				text, _ := os.ReadFile(cfg)
				os.WriteFile(cfg, append(text, []byte("\n[[listen.users]]\nusername = \"app\"\npassword = \"app-pass-123\"\n")...), 0o600)
			}
			p := startProc(t, "run", "--config", cfg)
			p.waitLog(t, "listening for local mail clients")
			out, err := exec.Command(python, "-c", symfonyBS, binary, "sendmail", "-bs", "--config", cfg).CombinedOutput()
			if err != nil {
				t.Fatalf("sendmail -bs: %v\n%s", err, out)
			}
			got := s.WaitMessages(1, 20*time.Second)
			if len(got) != 1 || got[0].Subject() != "symfony -bs" || !strings.Contains(string(got[0].Data), "\r\n.a dot line\r\n") {
				t.Fatalf("delivered: %+v", got)
			}
		})
	}
}

// With the relay stopped, -bs answers 421 and exits 75: the framework keeps
// the message and tries again.
func TestSendmailBSWithoutARelay(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	cfg := writeConfigAt(t, s, t.TempDir(), s.Password(), freeAddr(t), "")
	cmd := exec.Command(binary, "sendmail", "-bs", "--config", cfg)
	cmd.Stdin = strings.NewReader("EHLO x\r\n")
	out, _ := cmd.Output()
	if code := cmd.ProcessState.ExitCode(); code != 75 || !strings.HasPrefix(string(out), "421 ") {
		t.Fatalf("exit %d, output %q", code, out)
	}
}

// Linked as mailq (or -bp), the binary lists the queue.
func TestMailqListsTheQueue(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "")
	// Queued offline (no relay running): one message waits.
	run := exec.Command(binary, "sendmail", "--config", cfg, "friend@example.com")
	run.Stdin = strings.NewReader("Subject: waiting\n\nx\n")
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("sendmail: %v\n%s", err, out)
	}
	mailq := filepath.Join(dir, "mailq")
	if err := os.Symlink(binary, mailq); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mailq)
	cmd.Env = append(os.Environ(), "ICLOUD_RELAY_CONFIG="+cfg)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "friend@example.com") {
		t.Fatalf("mailq: %v\n%s", err, out)
	}
}
