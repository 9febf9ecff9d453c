package relay

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Sender rewriting modes (sender.rewrite).
const (
	RewriteOff      = "off"
	RewriteEnvelope = "envelope"
	RewriteHeader   = "header"
)

// SenderPolicy says which senders iCloud will take and what to do with
// others: iCloud refuses any sender that is not the account's address or
// one of its aliases.
type SenderPolicy struct {
	Address string
	Aliases []string
	Mode    string
}

func (p SenderPolicy) allowed(addr string) bool {
	if strings.EqualFold(addr, p.Address) {
		return true
	}
	for _, a := range p.Aliases {
		if strings.EqualFold(addr, a) {
			return true
		}
	}
	return false
}

// envelopeSender returns the MAIL FROM to use upstream for from, or the
// refusal to give the client when the policy does not rewrite.
func (p SenderPolicy) envelopeSender(from string) (string, *smtp.SMTPError) {
	if p.allowed(from) {
		return from, nil
	}
	if p.Mode == RewriteOff {
		what := "<" + from + ">"
		if from == "" {
			what = "The empty sender <>"
		}
		return "", &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: fmt.Sprintf("%s is not your iCloud address or one of its aliases, and iCloud would refuse it: send from %s, list the address in sender.aliases, or set sender.rewrite = \"envelope\" or \"header\"", what, p.Address)}
	}
	return p.Address, nil
}

// headerReserve is the room kept below the upstream's size limit for the
// headers the relay may add (Received, Date, Message-ID, a rewritten From
// and Reply-To), so a message it accepts is never too large upstream.
const headerReserve = 8 << 10

// maxHeaderBlock bounds the header block read into memory; a longer one is
// passed through untouched.
const maxHeaderBlock = 256 << 10

// intake describes one incoming message for header fix-ups.
type intake struct {
	id       string // queue ID, for the Received header
	helo     string
	client   string
	by       string // this relay's host name
	received bool   // add a Received trace header
	policy   SenderPolicy
	now      time.Time
}

// edits reports what the fix-ups changed, for the log.
type edits struct {
	fromRewritten  string // the original From header, when rewritten
	addedDate      bool
	addedMessageID bool
	messageID      string // the Message-ID header's value, as found or added
	signedKept     bool   // a DKIM-signed message whose From was left alone
}

// intakeBuffers are the buffers one incoming message passes through. The
// server pools them: a fresh set per message would be ~100 KiB of garbage,
// and the collector's work would show in every message's cost.
type intakeBuffers struct {
	in     *bufio.Reader // the client's data, with look-ahead for crlfReader
	crlf   crlfReader
	br     *bufio.Reader // reads the header block a line at a time
	raw    bytes.Buffer  // the header block as received
	head   bytes.Buffer  // the header block as it will be stored
	fields []span        // the header fields, as spans of raw
}

// span is a part of a buffer: [start, end).
type span struct{ start, end int }

func newIntakeBuffers() *intakeBuffers {
	b := &intakeBuffers{in: bufio.NewReader(nil)}
	b.br = bufio.NewReaderSize(&b.crlf, 32<<10)
	return b
}

// fixedMessage is a message after the fix-ups: the rewritten header block,
// then the rest of the client's data, streamed.
type fixedMessage struct {
	b    *intakeBuffers
	head []byte // not yet read
}

func (f *fixedMessage) Read(p []byte) (int, error) {
	if len(f.head) > 0 {
		n := copy(p, f.head)
		f.head = f.head[n:]
		return n, nil
	}
	return f.b.br.Read(p)
}

// WriteTo streams the message into w without an intermediate copy buffer
// (io.Copy would allocate one per message).
func (f *fixedMessage) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(f.head) > 0 {
		n, err := w.Write(f.head)
		total += int64(n)
		f.head = f.head[n:]
		if err != nil {
			return total, err
		}
	}
	if k := f.b.br.Buffered(); k > 0 {
		buffered, _ := f.b.br.Peek(k)
		n, err := w.Write(buffered)
		f.b.br.Discard(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	n, err := f.b.crlf.WriteTo(w)
	return total + n, err
}

// fixMessage returns the message with bare LF line endings turned into CRLF
// and the header fixes applied: a Received trace header; Date and
// Message-ID when missing; and, in header mode, a From that iCloud will
// accept (display name kept; the original address into Reply-To when there
// is none). Only the header block is held in memory; the body streams.
//
// b must not be in use by another message until the result is consumed.
func fixMessage(b *intakeBuffers, r io.Reader, in intake) (*fixedMessage, *edits, error) {
	// go-smtp already undid the dot-stuffing of the first line.
	b.in.Reset(r)
	b.crlf.reset(b.in)
	b.br.Reset(&b.crlf)
	b.raw.Reset()
	b.head.Reset()
	br, raw, out := b.br, &b.raw, &b.head
	// Lines are read no longer than br's buffer, and a folded field grows
	// its span, not a copy: the work is linear in the header's size and the
	// memory bounded whatever the input (a "line" of 19 MiB, 60,000
	// continuation lines).
	fields := b.fields[:0]
	complete := false
read:
	for raw.Len() <= maxHeaderBlock {
		line, err := br.ReadSlice('\n')
		if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
			return nil, nil, err
		}
		start := raw.Len()
		raw.Write(line)
		if err == bufio.ErrBufferFull {
			break // a line longer than any header line: not a header block
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			// End of input inside the header block.
		case len(trimmed) == 0:
			complete = true // the blank line that ends the header block
		case (trimmed[0] == ' ' || trimmed[0] == '\t') && len(fields) > 0:
			fields[len(fields)-1].end = raw.Len()
			continue read
		case isFieldLine(string(trimmed)):
			fields = append(fields, span{start, raw.Len()})
			continue read
		}
		break
	}
	b.fields = fields
	ed := &edits{}
	if in.received {
		fmt.Fprintf(out, "Received: from %s (%s)\r\n\tby %s (icloud-relay) with ESMTP id %s;\r\n\t%s\r\n",
			sanitize(in.helo), sanitize(in.client), sanitize(in.by), in.id, in.now.Format(time.RFC1123Z))
	}
	if !complete {
		// No recognisable header block: add nothing else, change nothing.
		out.Write(raw.Bytes())
		return &fixedMessage{b: b, head: out.Bytes()}, ed, nil
	}
	rawBytes := raw.Bytes()
	names := make([]string, len(fields))
	for i, f := range fields {
		name, _, _ := bytes.Cut(rawBytes[f.start:min(f.end, f.start+80)], []byte(":"))
		names[i] = strings.ToLower(strings.TrimSpace(string(name)))
	}
	has := func(name string) bool {
		for _, n := range names {
			if n == name {
				return true
			}
		}
		return false
	}
	signed := has("dkim-signature")
	for i, fs := range fields {
		f := string(rawBytes[fs.start:fs.end])
		if names[i] == "message-id" && ed.messageID == "" {
			_, v, _ := strings.Cut(f, ":")
			ed.messageID = strings.Join(strings.Fields(v), " ")
		}
		if names[i] == "from" && in.policy.Mode == RewriteHeader {
			if nf, orig, ok := rewriteFrom(f, in.policy); ok {
				if signed {
					ed.signedKept = true
				} else {
					out.WriteString(nf)
					if !has("reply-to") {
						out.WriteString("Reply-To:" + orig)
					}
					ed.fromRewritten = strings.TrimSpace(orig)
					continue
				}
			}
		}
		out.WriteString(f)
	}
	if !has("date") {
		fmt.Fprintf(out, "Date: %s\r\n", in.now.Format(time.RFC1123Z))
		ed.addedDate = true
	}
	if !has("message-id") {
		ed.messageID = fmt.Sprintf("<%s.%s@%s>", in.now.UTC().Format("20060102150405"), randomHex(6), domainOf(in.policy.Address))
		fmt.Fprintf(out, "Message-ID: %s\r\n", ed.messageID)
		ed.addedMessageID = true
	}
	out.WriteString("\r\n")
	return &fixedMessage{b: b, head: out.Bytes()}, ed, nil
}

// isFieldLine reports a "Name: value" header line.
func isFieldLine(line string) bool {
	i := strings.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	for _, c := range line[:i] {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

func headerName(field string) string {
	name, _, _ := strings.Cut(field, ":")
	return strings.ToLower(strings.TrimSpace(name))
}

// unfold joins a header field's folded lines (one replacer for all: it is
// safe for concurrent use, and building one per call showed in profiles).
var unfold = strings.NewReplacer("\r\n", "", "\n", "")

// rewriteFrom returns a From field with the policy's address and the
// original display name, and the original field value, when the From
// address is not one iCloud accepts.
func rewriteFrom(field string, p SenderPolicy) (newField, origValue string, ok bool) {
	_, value, _ := strings.Cut(field, ":")
	unfolded := unfold.Replace(value)
	addrs, err := mail.ParseAddressList(strings.TrimSpace(unfolded))
	if err == nil && len(addrs) == 1 && p.allowed(addrs[0].Address) {
		return "", "", false
	}
	name := ""
	if err == nil && len(addrs) > 0 {
		name = addrs[0].Name
	}
	return "From: " + (&mail.Address{Name: name, Address: p.Address}).String() + "\r\n", value, true
}

// sanitize keeps trace header values on one line.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '(' || r == ')' || r == ';' {
			return ' '
		}
		return r
	}, s)
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 && i < len(addr)-1 {
		return addr[i+1:]
	}
	return "icloud-relay.invalid"
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// crlfReader turns bare LF line endings into CRLF, and removes the
// dot-stuffing a client applied after a bare LF (go-smtp only undoes it
// after CRLF), so such clients' lines starting with "." survive intact. It
// works a chunk at a time: this is on every message's path.
type crlfReader struct {
	r       *bufio.Reader
	prevCR  bool  // the last byte seen was '\r'
	bol     bool  // at the start of a line that followed a bare LF
	line    int64 // length of the line being read so far
	longest int64 // of the lines read, without their line breaks
	err     error // the read error that comes after the bytes already read
	raw     [32 << 10]byte
	buf     []byte
	out     []byte
}

// longestLine is the length of the longest line read, the last one
// (which may have no line break) included.
func (c *crlfReader) longestLine() int64 { return max(c.longest, c.line) }

func (c *crlfReader) reset(r *bufio.Reader) {
	c.r, c.prevCR, c.bol, c.out, c.line, c.longest, c.err = r, false, false, nil, 0, 0, nil
}

// WriteTo hands each converted chunk straight to w.
func (c *crlfReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(c.out) > 0 {
			n, err := w.Write(c.out)
			total += int64(n)
			c.out = c.out[n:]
			if err != nil {
				return total, err
			}
		}
		if err := c.fill(); err == io.EOF {
			return total, nil
		} else if err != nil {
			return total, err
		}
	}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

func (c *crlfReader) fill() error {
	if c.err != nil {
		return c.err
	}
	n, err := c.r.Read(c.raw[:])
	c.err = err // a read may return data and an error: the error comes next
	if n == 0 {
		return err
	}
	in, out := c.raw[:n], c.buf[:0]
	for len(in) > 0 {
		if c.bol {
			c.bol = false
			if in[0] == '.' {
				// ".." at the start of a bare-LF line is a stuffed ".".
				if len(in) > 1 && in[1] == '.' {
					in = in[1:]
				} else if len(in) == 1 {
					if next, err := c.r.Peek(1); err == nil && next[0] == '.' {
						c.r.Discard(1)
					}
				}
			}
		}
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			out = append(out, in...)
			c.prevCR = in[len(in)-1] == '\r'
			c.line += int64(len(in))
			break
		}
		out = append(out, in[:i]...)
		cr := (i > 0 && in[i-1] == '\r') || (i == 0 && c.prevCR)
		if c.line += int64(i); cr {
			c.line--
		}
		c.longest, c.line = max(c.longest, c.line), 0
		if !cr {
			out = append(out, '\r')
			c.bol = true
		}
		out = append(out, '\n')
		c.prevCR = false
		in = in[i+1:]
	}
	c.buf, c.out = out, out
	return nil
}
