// Package redact masks secrets wherever text could carry them out: the
// log, queue records (an upstream reply may echo what it was sent), the
// queue commands' and doctor's output, and the control API.
//
// One Redactor holds every secret of a running relay in every form it may
// appear in: as it is, escaped inside JSON, base64 (AUTH LOGIN sends the
// password so) and the base64 of an AUTH PLAIN response. Secrets are only
// ever added, never removed: after a reload with a new password, text may
// still carry the old one.
package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"sort"
	"sync"
)

// Mask is what a secret is replaced with.
const Mask = "[REDACTED]"

// minLen: shorter secrets are ignored; masking them would garble ordinary
// text, and they are not real passwords.
const minLen = 4

// Redactor masks a set of secrets. The zero value masks nothing; a nil
// *Redactor is valid and masks nothing.
type Redactor struct {
	mu    sync.RWMutex
	forms [][]byte
}

// New returns a Redactor for secrets.
func New(secrets ...string) *Redactor {
	r := &Redactor{}
	r.Add(secrets...)
	return r
}

// Add adds secrets in their plain, JSON-escaped and base64 forms.
func (r *Redactor) Add(secrets ...string) {
	for _, s := range secrets {
		if len(s) < minLen {
			continue
		}
		r.add(s, base64.StdEncoding.EncodeToString([]byte(s)))
		for _, html := range []bool{false, true} {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(html)
			enc.Encode(s)
			if q := bytes.TrimSpace(b.Bytes()); string(q[1:len(q)-1]) != s {
				r.add(string(q[1 : len(q)-1]))
			}
		}
	}
}

// AddLogin adds a password and the AUTH PLAIN responses that carry it for
// user (with and without an authorization identity).
func (r *Redactor) AddLogin(user, password string) {
	if len(password) < minLen {
		return
	}
	r.Add(password)
	r.add(base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)),
		base64.StdEncoding.EncodeToString([]byte(user+"\x00"+user+"\x00"+password)))
}

func (r *Redactor) add(forms ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, f := range forms {
		for _, have := range r.forms {
			if string(have) == f {
				continue next
			}
		}
		r.forms = append(r.forms, []byte(f))
	}
	// Longest first: one form may contain another (the base64 of a
	// password can end the base64 of an AUTH PLAIN response).
	sort.Slice(r.forms, func(i, j int) bool { return len(r.forms[i]) > len(r.forms[j]) })
}

// Bytes returns p with every secret masked (p itself when there is none).
func (r *Redactor) Bytes(p []byte) []byte {
	if r == nil {
		return p
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, f := range r.forms {
		if bytes.Contains(p, f) {
			p = bytes.ReplaceAll(p, f, []byte(Mask))
		}
	}
	return p
}

// String returns s with every secret masked.
func (r *Redactor) String(s string) string {
	if r == nil {
		return s
	}
	return string(r.Bytes([]byte(s)))
}

// Writer masks secrets in what is written through it. Each Write is
// masked on its own: a writer that splits a secret over two calls defeats
// it, so use it where each Write is a whole record (a log line, a report).
func (r *Redactor) Writer(w io.Writer) io.Writer { return &writer{r: r, w: w} }

type writer struct {
	r *Redactor
	w io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	if _, err := w.w.Write(w.r.Bytes(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
