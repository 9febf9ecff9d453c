package app_test

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// need returns the path of an external client, failing in CI (so real-client
// coverage cannot silently vanish) and skipping elsewhere when it is missing.
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testenv.Skip(t, fmt.Sprintf("%s is not installed (.ci/run installs it): %v", tool, err))
	}
	return p
}

func bigMessage(subject string, size int) string {
	raw := make([]byte, size*3/4)
	rand.Read(raw)
	enc := base64.StdEncoding.EncodeToString(raw)
	var b strings.Builder
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n")
	b.WriteString(strings.TrimSuffix(message(subject, ""), "\r\n"))
	b.WriteString("\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--b1--\r\n")
	return b.String()
}

func TestRealClientsEveryWay(t *testing.T) {
	tlsAddr := freeAddr(t)
	e := newEnv(t, fmt.Sprintf("[listen]\naddr = \"127.0.0.1:0\"\ntls_addr = %q\n", tlsAddr))
	_, port, _ := net.SplitHostPort(e.addr())
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	dir := t.TempDir()
	utf8Msg := "From: Jürgen <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: Grüße aus Köln ✓\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <utf8@test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄÖÜ äöü ß — 8-bit UTF-8 body.\r\n"
	big := bigMessage("ten-mib", 10<<20)

	type tc struct {
		name  string
		tool  string
		args  func(file string) []string
		stdin bool
		data  string // what the client is given
		want  string // what must arrive (after the trace header); "" means data
		to    string
	}
	py := func(opts string) func(string) []string {
		return func(file string) []string {
			return []string{"-c", `
import smtplib, sys
data = open(sys.argv[2], "rb").read()
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="py.test")
` + opts + `
s.quit()`, port, file}
		}
	}
	cases := []tc{
		{name: "swaks plain", tool: "swaks", args: func(f string) []string {
			return []string{"--server", "127.0.0.1:" + port, "--helo", "swaks.test", "--from", "demo@icloud.com", "--to", "friend@example.com", "--data", "@" + f, "--silent", "2"}
		}, data: message("swaks-plain", "Hello from swaks.\r\n.leading dot\r\n")},
		{name: "swaks pipelining", tool: "swaks", args: func(f string) []string {
			return []string{"--server", "127.0.0.1:" + port, "--helo", "swaks.test", "--pipeline", "--from", "demo@icloud.com", "--to", "friend@example.com", "--data", "@" + f, "--silent", "2"}
		}, data: message("swaks-pipeline", "MAIL, RCPT and DATA in one go.\r\n")},
		{name: "swaks STARTTLS and AUTH", tool: "swaks", args: func(f string) []string {
			return []string{"--server", "127.0.0.1:" + port, "--tls", "--auth", "PLAIN", "--auth-user", "any", "--auth-password", "thing", "--from", "demo@icloud.com", "--to", "friend@example.com", "--data", "@" + f, "--silent", "2"}
		}, data: message("swaks-tls-auth", "Secured and logged in.\r\n")},
		{name: "swaks HELO only", tool: "swaks", args: func(f string) []string {
			return []string{"--server", "127.0.0.1:" + port, "--protocol", "SMTP", "--helo", "old.client", "--from", "demo@icloud.com", "--to", "friend@example.com", "--data", "@" + f, "--silent", "2"}
		}, data: message("swaks-helo", "HELO, not EHLO.\r\n")},
		{name: "swaks AUTH LOGIN over implicit TLS", tool: "swaks", args: func(f string) []string {
			return []string{"--server", "127.0.0.1:" + tlsPort, "--tlsc", "--auth", "LOGIN", "--auth-user", "u", "--auth-password", "p", "--from", "demo@icloud.com", "--to", "friend@example.com", "--data", "@" + f, "--silent", "2"}
		}, data: message("swaks-implicit-tls", "TLS from the first byte.\r\n")},
		{name: "msmtp plain", tool: "msmtp", stdin: true, args: func(string) []string {
			return []string{"--host=127.0.0.1", "--port=" + port, "--from=demo@icloud.com", "--auth=off", "--tls=off", "friend@example.com"}
		}, data: message("msmtp-plain", "Hello from msmtp.\r\n")},
		{name: "msmtp STARTTLS and AUTH", tool: "msmtp", stdin: true, args: func(string) []string {
			return []string{"--host=127.0.0.1", "--port=" + port, "--from=demo@icloud.com", "--tls=on", "--tls-starttls=on", "--tls-certcheck=off",
				"--auth=plain", "--user=scanner", "--passwordeval=echo secret", "friend@example.com"}
		}, data: message("msmtp-tls-auth", "Secured by msmtp.\r\n")},
		{name: "msmtp 8-bit UTF-8", tool: "msmtp", stdin: true, args: func(string) []string {
			return []string{"--host=127.0.0.1", "--port=" + port, "--from=demo@icloud.com", "--auth=off", "--tls=off", "friend@example.com"}
		}, data: utf8Msg},
		{name: "curl plain", tool: "curl", args: func(f string) []string {
			return []string{"-sS", "--url", "smtp://127.0.0.1:" + port, "--mail-from", "demo@icloud.com", "--mail-rcpt", "friend@example.com", "--upload-file", f}
		}, data: message("curl-plain", "Hello from curl.\r\n")},
		{name: "curl STARTTLS, AUTH, 10 MiB attachment", tool: "curl", args: func(f string) []string {
			return []string{"-sS", "--ssl-reqd", "-k", "--user", "any:thing", "--url", "smtp://127.0.0.1:" + port, "--mail-from", "demo@icloud.com", "--mail-rcpt", "friend@example.com", "--upload-file", f}
		}, data: big},
		{name: "curl implicit TLS", tool: "curl", args: func(f string) []string {
			return []string{"-sS", "-k", "--url", "smtps://127.0.0.1:" + tlsPort, "--mail-from", "demo@icloud.com", "--mail-rcpt", "friend@example.com", "--upload-file", f}
		}, data: message("curl-smtps", "Implicit TLS with curl.\r\n")},
		{name: "smtplib bare LF", tool: "python3", args: py(`s.sendmail("demo@icloud.com", ["friend@example.com"], data)`),
			data: "From: <demo@icloud.com>\nTo: <friend@example.com>\nSubject: bare-lf\nDate: Sun, 22 Nov 2026 01:00:00 +0000\nMessage-ID: <lf@test>\n\nbare LF lines\n.dot line\n..two dots\nlast\r\n",
			want: "From: <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: bare-lf\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <lf@test>\r\n\r\nbare LF lines\r\n.dot line\r\n..two dots\r\nlast\r\n"},
		{name: "smtplib SMTPUTF8 and 8BITMIME", tool: "python3", to: "jürgen@example.de",
			args: py(`s.sendmail("demo@icloud.com", ["jürgen@example.de"], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"])`), data: utf8Msg},
		{name: "smtplib STARTTLS and AUTH LOGIN", tool: "python3", args: py(`
import ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx); s.ehlo("py.test"); s.login("user", "pass")
s.sendmail("demo@icloud.com", ["friend@example.com"], data)`), data: message("smtplib-tls", "Secured by smtplib.\r\n")},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := need(t, c.tool)
			file := filepath.Join(dir, fmt.Sprintf("m%d.eml", i))
			input := c.data
			if c.tool == "swaks" {
				// swaks ends the data with its own CRLF before the dot.
				input = strings.TrimSuffix(input, "\r\n")
			}
			os.WriteFile(file, []byte(input), 0o600)
			before := len(e.standin.Messages())
			cmd := exec.Command(path, c.args(file)...)
			if c.stdin {
				f, _ := os.Open(file)
				defer f.Close()
				cmd.Stdin = f
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", c.tool, err, out)
			}
			got := e.standin.WaitMessages(before+1, 30*time.Second)
			if len(got) != before+1 {
				t.Fatal("nothing arrived at the stand-in")
			}
			m := got[before]
			want := c.want
			if want == "" {
				want = c.data
			}
			if body := upstreamtest.StripTrace(m.Data); body != want {
				if len(body) > 2000 || len(want) > 2000 {
					t.Fatalf("changed in transit (%d bytes, want %d)", len(body), len(want))
				}
				t.Fatalf("changed in transit:\n got %q\nwant %q", body, want)
			}
			to := c.to
			if to == "" {
				to = "friend@example.com"
			}
			if m.From != "demo@icloud.com" || strings.Join(m.To, ",") != to {
				t.Fatalf("envelope %s -> %v", m.From, m.To)
			}
		})
	}
}

func TestSMTPUTF8MessageToAServerWithoutIt(t *testing.T) {
	e := newEnvWith(t, upstreamtest.Options{NoSMTPUTF8: true}, "")
	c, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("demo@icloud.com", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	c.Rcpt("jürgen@example.de", nil)
	w, _ := c.Data()
	w.Write([]byte(message("utf8", "x\r\n")))
	err = w.Close()
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code/100 != 5 || !strings.Contains(se.Message, "SMTPUTF8") {
		t.Fatalf("want a clear permanent refusal naming SMTPUTF8, got %v", err)
	}
}

func TestManyRecipientsAndTheLimit(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_recipients = 50\n")
	c, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Mail("demo@icloud.com", nil)
	for i := 0; i < 50; i++ {
		if err := c.Rcpt(fmt.Sprintf("r%d@example.com", i), nil); err != nil {
			t.Fatalf("rcpt %d: %v", i, err)
		}
	}
	err = c.Rcpt("one-too-many@example.com", nil)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 452 {
		t.Fatalf("51st recipient: %v, want 452", err)
	}
	w, _ := c.Data()
	w.Write([]byte(message("fifty", "x\r\n")))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 || len(got[0].To) != 50 {
		t.Fatalf("got %d messages", len(got))
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestSenderRewriteModes(t *testing.T) {
	const in = "From: \"Office Scanner\" <scanner@printer.lan>\r\nTo: <friend@example.com>\r\nSubject: scan\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <scan@printer.lan>\r\n\r\npage 1\r\n"
	t.Run("off", func(t *testing.T) {
		e := newEnv(t, "[sender]\nrewrite = \"off\"\n")
		_, err := send(e.addr(), "scanner@printer.lan", []string{"friend@example.com"}, in)
		se, ok := err.(*smtp.SMTPError)
		if !ok || se.Code != 553 || !strings.Contains(se.Message, "sender.rewrite") {
			t.Fatalf("want a local 553 with the remedy, got %v", err)
		}
		if len(e.standin.Messages()) != 0 || e.standin.AuthAttempts() != 0 {
			t.Fatal("upstream was contacted for a sender it would refuse")
		}
		if l := e.logs.lines(map[string]any{"stage": "accept", "from": "scanner@printer.lan"}); len(l) != 1 || l[0]["remedy"] == nil {
			t.Fatalf("log: %v", l)
		}
		if _, err := send(e.addr(), "", []string{"friend@example.com"}, in); err == nil {
			t.Fatal("the null sender must be refused with rewrite off")
		}
	})
	t.Run("envelope", func(t *testing.T) {
		e := newEnv(t, "[sender]\nrewrite = \"envelope\"\n")
		if _, err := send(e.addr(), "scanner@printer.lan", []string{"friend@example.com"}, in); err != nil {
			t.Fatal(err)
		}
		got := e.standin.WaitMessages(1, 10*time.Second)
		if len(got) != 1 || got[0].From != "demo@icloud.com" || upstreamtest.StripTrace(got[0].Data) != in {
			t.Fatalf("got %+v", got)
		}
		if l := e.logs.lines(map[string]any{"from": "scanner@printer.lan", "rewritten_to": "demo@icloud.com"}); len(l) != 1 {
			t.Fatalf("rewrite not logged with both addresses: %v", l)
		}
	})
	t.Run("header", func(t *testing.T) {
		e := newEnv(t, "[sender]\nrewrite = \"header\"\n")
		if _, err := send(e.addr(), "", []string{"friend@example.com"}, in); err != nil {
			t.Fatal(err)
		}
		got := e.standin.WaitMessages(1, 10*time.Second)
		want := "From: \"Office Scanner\" <demo@icloud.com>\r\nReply-To: \"Office Scanner\" <scanner@printer.lan>\r\n" + strings.SplitN(in, "\r\n", 2)[1]
		if len(got) != 1 || got[0].From != "demo@icloud.com" || upstreamtest.StripTrace(got[0].Data) != want {
			t.Fatalf("got %+v\n%q", got, got[0].Data)
		}
		if l := e.logs.lines(map[string]any{"rewritten_to": "demo@icloud.com"}); len(l) != 2 {
			t.Fatalf("want the envelope and the header rewrite logged, got %v", l)
		}
	})
}
