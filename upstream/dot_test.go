package upstream

import (
	"bufio"
	"bytes"
	"testing"
	"testing/iotest"
)

// dotReference is the byte-at-a-time definition of dotWriter: a "." at the
// start of a line is doubled, a bare LF becomes CRLF, and the data ends
// with CRLF "." CRLF. (net/textproto's writer differs only in treating
// "\r\r\n" as a bare LF.)
func dotReference(in []byte) string {
	var b bytes.Buffer
	for i, c := range in {
		if c == '.' && (i == 0 || in[i-1] == '\n') {
			b.WriteByte('.')
		}
		if c == '\n' && (i == 0 || in[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(c)
	}
	switch {
	case len(in) == 0 || in[len(in)-1] == '\n':
	case in[len(in)-1] == '\r':
		b.WriteByte('\n')
	default:
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.String()
}

func TestDotWriterMatchesReferenceAcrossChunks(t *testing.T) {
	alphabet := "\r\n.a"
	seed := uint32(7)
	for n := 0; n < 3000; n++ {
		var in []byte
		for i := 0; i < n%61; i++ {
			seed = seed*1664525 + 1013904223
			in = append(in, alphabet[seed>>30])
		}
		var got bytes.Buffer
		d := &dotWriter{w: bufio.NewWriterSize(&got, 16), last: '\n'}
		// One-byte reads put a chunk boundary everywhere.
		if _, err := d.copyFrom(iotest.OneByteReader(bytes.NewReader(in)), make([]byte, 3)); err != nil {
			t.Fatal(err)
		}
		if err := d.end(); err != nil {
			t.Fatal(err)
		}
		d.w.Flush()
		if want := dotReference(in); got.String() != want {
			t.Fatalf("input %q:\n got %q\nwant %q", in, got.String(), want)
		}
	}
}
