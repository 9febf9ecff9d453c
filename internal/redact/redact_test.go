package redact

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestEveryFormIsMasked(t *testing.T) {
	const user, pass = "me@icloud.com", `pa"ss<word>-1234`
	r := New()
	r.AddLogin(user, pass)
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, form := range []string{
		pass,
		`pa\"ss<word>-1234`,           // inside JSON
		`pa\"ss\u003cword\u003e-1234`, // inside JSON with HTML escaping
		b64(pass),                     // AUTH LOGIN
		b64("\x00" + user + "\x00" + pass),
		b64(user + "\x00" + user + "\x00" + pass),
	} {
		if got := r.String("before " + form + " after"); got != "before "+Mask+" after" {
			t.Errorf("%q not masked: %q", form, got)
		}
	}
}

func TestSecretsAreAddedNeverRemoved(t *testing.T) {
	r := New("old-password-1")
	r.Add("new-password-2")
	if got := r.String("old-password-1 new-password-2"); strings.Contains(got, "password") {
		t.Fatalf("after a new password, text still shows %q", got)
	}
}

func TestShortSecretsAndNilAreHarmless(t *testing.T) {
	if got := New("ab").String("about tabs"); got != "about tabs" {
		t.Fatalf("a 2-byte secret garbled text: %q", got)
	}
	var r *Redactor
	if got := r.String("anything"); got != "anything" {
		t.Fatalf("nil redactor: %q", got)
	}
	var buf bytes.Buffer
	w := New("secret-value").Writer(&buf)
	if n, err := w.Write([]byte("a secret-value b")); err != nil || n != len("a secret-value b") || buf.String() != "a "+Mask+" b" {
		t.Fatalf("writer: %d %v %q", n, err, buf.String())
	}
}
