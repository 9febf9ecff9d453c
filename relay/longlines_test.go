package relay

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"runtime"
	"strings"
	"testing"
	"time"
)

func reencode(t *testing.T, msg string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := reencodeLongLines(func() (io.Reader, error) { return strings.NewReader(msg), nil }, &out)
	return out.String(), err
}

// checkLines fails if any line is longer than RFC 5322 allows.
func checkLines(t *testing.T, msg string) {
	t.Helper()
	for i, l := range strings.Split(msg, "\r\n") {
		if len(l) > maxLineLength {
			t.Fatalf("line %d is still %d bytes long", i+1, len(l))
		}
	}
}

// decoded returns what a reader sees of a leaf: its body, decoded.
func decoded(t *testing.T, cte string, body io.Reader) string {
	t.Helper()
	var r io.Reader = body
	switch strings.ToLower(cte) {
	case "quoted-printable":
		r = quotedprintable.NewReader(body)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode %s: %v", cte, err)
	}
	return string(b)
}

// parts returns each leaf's decoded content, in order.
func parts(t *testing.T, msg string) []string {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	ct, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if !strings.HasPrefix(ct, "multipart/") {
		return []string{decoded(t, m.Header.Get("Content-Transfer-Encoding"), m.Body)}
	}
	var out []string
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, decoded(t, p.Header.Get("Content-Transfer-Encoding"), p))
	}
}

func TestLongLineInAPlainMessageBecomesQuotedPrintable(t *testing.T) {
	html := "<p>" + strings.Repeat("Grüße, ", 700) + "</p>"
	msg := "From: a@icloud.com\r\nTo: b@example.com\r\nSubject: long\r\n\r\n" + html + "\r\nsecond line =ok\r\n"
	out, err := reencode(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, out)
	for _, h := range []string{"MIME-Version: 1.0\r\n", "Content-Type: text/plain; charset=utf-8\r\n", "Content-Transfer-Encoding: quoted-printable\r\n", "Subject: long\r\n"} {
		if !strings.Contains(out, h) {
			t.Errorf("no %q in\n%s", h, out[:300])
		}
	}
	if got := parts(t, out); len(got) != 1 || got[0] != html+"\r\nsecond line =ok\r\n" {
		t.Fatalf("content changed: %q", got)
	}
}

func TestOnlyThePartWithLongLinesChanges(t *testing.T) {
	long := strings.Repeat("x", 4096)
	b64 := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("binary\x00\xff", 600)))
	msg := "From: a@icloud.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n" +
		"preamble\r\n--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n" +
		"--inner\r\nContent-Type: text/plain\r\n\r\nshort text\r\n" +
		"--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<b>" + long + "</b>\r\n" +
		"--inner--\r\n" +
		"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64 + "\r\n" +
		"--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n" + long + "\r\n" +
		"--outer--\r\nepilogue\r\n"
	out, err := reencode(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, out)
	if !strings.Contains(out, "--inner\r\nContent-Type: text/plain\r\n\r\nshort text\r\n--inner\r\n") {
		t.Errorf("a part without long lines changed")
	}
	if strings.Contains(out, "8bit") {
		t.Errorf("the re-encoded part still says 8bit")
	}
	outer := parts(t, out)
	if len(outer) != 3 {
		t.Fatalf("%d parts", len(outer))
	}
	if outer[1] != strings.Repeat("binary\x00\xff", 600) {
		t.Errorf("base64 attachment changed")
	}
	alt := parts(t, "Content-Type: multipart/alternative; boundary=inner\r\n\r\n"+between(out, "Content-Type: multipart/alternative; boundary=inner\r\n\r\n", "--outer\r\n"))
	if len(alt) != 2 || alt[0] != "short text" || alt[1] != "<b>"+long+"</b>" {
		t.Errorf("alternative parts: %q", alt)
	}
	attached := between(out, "Content-Type: message/rfc822\r\n\r\n", "\r\n--outer--")
	if got := parts(t, attached); len(got) != 1 || got[0] != long {
		t.Errorf("attached message: %q", got)
	}
}

func between(s, from, to string) string {
	_, rest, _ := strings.Cut(s, from)
	in, _, _ := strings.Cut(rest, to)
	return in
}

func TestLongBase64AndQuotedPrintableAreRewrapped(t *testing.T) {
	data := strings.Repeat("0123456789", 500)
	qp := strings.Repeat("caf=C3=A9 ", 400)
	msg := "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(data)) + "\r\n" +
		"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp + "\r\n" +
		"--b--\r\n"
	out, err := reencode(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, out)
	got := parts(t, out)
	if len(got) != 2 || got[0] != data || got[1] != strings.TrimSuffix(strings.Repeat("café ", 400), " ") { // as the original decodes
		t.Fatalf("content changed: %q", got)
	}
}

func TestLongHeaderLinesAreFolded(t *testing.T) {
	subject := strings.Repeat("word ", 400)
	out, err := reencode(t, "Subject: "+subject+"\r\n\r\n"+strings.Repeat("b", 2000)+"\r\n")
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, out)
	m, err := mail.ReadMessage(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(m.Header.Get("Subject")), " "); got != strings.TrimSpace(subject) {
		t.Fatalf("subject changed: %q", got)
	}
	if _, err := reencode(t, "Subject: "+strings.Repeat("w", 2000)+"\r\n\r\nx\r\n"); !isLineError(err) {
		t.Fatalf("an unfoldable header line: %v", err)
	}
}

func isLineError(err error) bool {
	var le *LineError
	return errors.As(err, &le)
}

func TestSignedMessagesWithLongLinesAreRefused(t *testing.T) {
	long := strings.Repeat("y", 3000)
	for name, msg := range map[string]string{
		"DKIM": "DKIM-Signature: v=1; a=rsa-sha256; d=example.com\r\nSubject: s\r\n\r\nline\r\n" + long + "\r\n",
		"S/MIME": "MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=s\r\n\r\n" +
			"--s\r\nContent-Type: text/plain\r\n\r\n" + long + "\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n",
	} {
		_, err := reencode(t, msg)
		var le *LineError
		if !errors.As(err, &le) {
			t.Fatalf("%s: %v", name, err)
		}
		if le.Length != 3000 || le.Line == 0 {
			t.Errorf("%s: %+v", name, le)
		}
		if r := le.SMTPReply(); r.Code != 554 || !strings.Contains(r.Message, "3000") {
			t.Errorf("%s: reply %+v", name, r)
		}
	}
}

// A folded header of tens of thousands of continuation lines costs work in
// proportion to its size (it was quadratic: 3.9 s of CPU for 240 KB).
func TestFoldedHeaderWorkIsLinear(t *testing.T) {
	var b strings.Builder
	b.WriteString("X-Folded: start\r\n")
	for i := 0; i < 60000; i++ {
		b.WriteString(" a\r\n")
	}
	b.WriteString("Subject: s\r\n\r\nbody\r\n")
	msg := b.String()
	bufs := newIntakeBuffers()
	run := func() {
		fixed, _, err := fixMessage(bufs, strings.NewReader(msg), intake{id: "x", policy: SenderPolicy{Address: "a@icloud.com", Mode: RewriteHeader}, now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, fixed)
	}
	run()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	run()
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 20*uint64(len(msg)) {
		t.Fatalf("fixing a %d-byte folded header allocated %d bytes: more than linear", len(msg), alloc)
	}
}
