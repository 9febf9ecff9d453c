package app_test

import (
	"io"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// decodedBody is the body of a single-part message as its reader sees it.
func decodedBody(t *testing.T, data []byte) (string, mail.Header) {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader = m.Body
	if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		r = quotedprintable.NewReader(m.Body)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), m.Header
}

// One HTML line of 4 KiB (curl, PHP and HTML mailers send such lines) is
// taken, delivered in a form strict servers accept (the stand-in, like
// many, refuses lines over 2,000 bytes), and arrives with its text intact.
func TestALongHTMLLineFromCurlArrivesIntact(t *testing.T) {
	curl := need(t, "curl")
	e := newEnv(t, "")
	_, port, _ := net.SplitHostPort(e.addr())
	html := "<html><body><p>" + strings.Repeat("Grüße aus Köln — ", 240) + "</p></body></html>"
	msg := "From: Demo <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: html\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + html + "\r\n"
	f := filepath.Join(t.TempDir(), "msg.eml")
	os.WriteFile(f, []byte(msg), 0o600)
	out, err := exec.Command(curl, "-sS", "--url", "smtp://127.0.0.1:"+port, "--mail-from", "demo@icloud.com",
		"--mail-rcpt", "friend@example.com", "--upload-file", f).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	got := e.standin.WaitMessages(1, 15*time.Second)
	if len(got) != 1 {
		t.Fatalf("stand-in got %d messages", len(got))
	}
	body, h := decodedBody(t, got[0].Data)
	if body != html+"\r\n" {
		t.Fatalf("the HTML changed in transit:\n got %q\nwant %q", body, html)
	}
	if h.Get("Content-Type") != "text/html; charset=utf-8" || h.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Fatalf("headers: %v", h)
	}
	for _, l := range strings.Split(string(got[0].Data), "\r\n") {
		if len(l) > 998 {
			t.Fatalf("a %d-byte line went upstream", len(l))
		}
	}
}
