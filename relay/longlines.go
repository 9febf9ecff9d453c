package relay

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// Long lines. RFC 5322 limits a line to 998 characters and strict servers
// refuse longer ones, but local clients (PHP, curl, HTML mailers) send
// them. The intake accepts lines of any length and re-encodes a message
// that has them, once, so that it can be delivered and its reader sees
// the same content:
//
//   - a text part (7bit, 8bit or no encoding) becomes quoted-printable;
//   - a base64 part is wrapped at 76 characters (decoders skip breaks);
//   - a quoted-printable part gets soft line breaks;
//   - a binary part becomes base64;
//   - a message without MIME structure becomes a quoted-printable
//     text/plain MIME message;
//   - multipart bodies and attached messages are walked part by part, and
//     only the parts with long lines change;
//   - a header line is folded at a space.
//
// A signed message (DKIM-Signature, multipart/signed, S/MIME) cannot be
// changed without breaking its signature, so it is refused with a
// permanent error that names the line; so is a header line that cannot be
// folded. Memory stays bounded: a line is read in pieces of at most
// longLinePiece bytes, and the message is read twice from the file it was
// staged in (first to find the parts that need it, then to rewrite them).
const (
	maxLineLength = 998
	longLinePiece = 64 << 10
	qpWidth       = 76
)

// LineError refuses a message whose long lines cannot be re-encoded.
type LineError struct {
	Line   int64 // 1-based line number in the message as stored
	Length int64
	Why    string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("line %d is %d bytes long, over the %d that mail servers accept, and %s", e.Line, e.Length, maxLineLength, e.Why)
}

// SMTPReply is the permanent refusal for e.
func (e *LineError) SMTPReply() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message refused: " + e.Error() + "; send it with lines of at most 998 characters"}
}

// reencodeLongLines copies the message in open() to w, re-encoded as above.
// open is called twice and must return the message from its start each time.
func reencodeLongLines(open func() (io.Reader, error), w io.Writer) error {
	survey := &lineWalker{}
	src, err := open()
	if err != nil {
		return err
	}
	if err := survey.message(src, io.Discard); err != nil {
		return err
	}
	if survey.refusal != nil {
		return survey.refusal
	}
	if src, err = open(); err != nil {
		return err
	}
	out := bufio.NewWriterSize(w, 32<<10)
	rewrite := &lineWalker{plan: survey.leaves}
	if err := rewrite.message(src, out); err != nil {
		return err
	}
	return out.Flush()
}

// leafSurvey is what the first pass learns about one leaf part.
type leafSurvey struct {
	longest   int64
	eightBit  bool
	validUTF8 bool
}

// lineWalker walks a message's MIME structure line by line. Without a
// plan it only surveys (the leaves, the first long line, whether that is
// inside something signed); with one it writes the re-encoded message.
type lineWalker struct {
	r      *bufio.Reader
	out    io.Writer
	atBOL  bool
	back   *piece // a piece read ahead and given back
	lineNo int64

	plan    []leafSurvey // nil: surveying
	leaves  []leafSurvey
	leaf    int
	signed  int // depth of signed entities around the current one
	refusal *LineError
}

// piece is a line, or the part of a longer one that fits the buffer.
type piece struct {
	p        []byte
	bol, eol bool // it starts a line; it ends one
}

// line returns the next piece of input: a whole line with its line break,
// or the part of a longer one that fits the buffer (bol says whether it
// starts a line, eol whether it ends one).
func (w *lineWalker) line() (p []byte, bol, eol bool, err error) {
	if b := w.back; b != nil {
		w.back = nil
		if b.bol {
			w.lineNo++
		}
		return b.p, b.bol, b.eol, nil
	}
	bol = w.atBOL
	p, err = w.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		err = nil
	}
	if len(p) == 0 {
		if err == nil {
			err = io.EOF
		}
		return nil, bol, true, err
	}
	eol = p[len(p)-1] == '\n' || err == io.EOF
	w.atBOL = eol
	if bol {
		w.lineNo++
	}
	if err == io.EOF {
		err = nil
	}
	return p, bol, eol, err
}

// unread gives back the piece just read (copied: the buffer moves on).
func (w *lineWalker) unread(p []byte, bol, eol bool) {
	w.back = &piece{p: append([]byte(nil), p...), bol: bol, eol: eol}
	if bol {
		w.lineNo--
	}
}

func (w *lineWalker) write(p []byte) error {
	_, err := w.out.Write(p)
	return err
}

func (w *lineWalker) message(r io.Reader, out io.Writer) error {
	w.r, w.out, w.atBOL = bufio.NewReaderSize(r, longLinePiece), out, true
	h, err := w.header()
	if err != nil {
		return err
	}
	if h.has("dkim-signature") {
		w.signed++
	}
	_, err = w.entity(h, nil, true)
	if err == io.EOF {
		err = nil
	}
	return err
}

// header is an entity's header block as read.
type header struct {
	fields  [][]byte // each with its continuation lines and line breaks
	blank   []byte   // the line that ended the block (nil: none; the body began at once)
	lineNos []int64
}

func (h *header) has(name string) bool { return h.index(name) >= 0 }

func (h *header) index(name string) int {
	for i, f := range h.fields {
		if headerName(string(f[:min(len(f), 80)])) == name {
			return i
		}
	}
	return -1
}

func (h *header) get(name string) string {
	if i := h.index(name); i >= 0 {
		_, v, _ := strings.Cut(string(h.fields[i]), ":")
		return strings.TrimSpace(unfold.Replace(v))
	}
	return ""
}

// header reads a header block. A header line longer than a piece is
// taken as the start of the body, as is any line that is not a field.
func (w *lineWalker) header() (*header, error) {
	h := &header{}
	var size int
	for {
		p, bol, eol, err := w.line()
		if err == io.EOF {
			return h, nil
		}
		if err != nil {
			return nil, err
		}
		trimmed := bytes.TrimRight(p, "\r\n")
		switch {
		case bol && eol && len(trimmed) == 0:
			h.blank = append([]byte(nil), p...)
			return h, nil
		case bol && eol && (trimmed[0] == ' ' || trimmed[0] == '\t') && len(h.fields) > 0:
			h.fields[len(h.fields)-1] = append(h.fields[len(h.fields)-1], p...)
		case bol && eol && isFieldLine(string(trimmed)):
			h.fields = append(h.fields, append([]byte(nil), p...))
			h.lineNos = append(h.lineNos, w.lineNo)
		case !eol && bol && isFieldLine(string(p)):
			return nil, &LineError{Line: w.lineNo, Length: int64(len(p)), Why: "it is a header line too long to handle"}
		default:
			w.unread(p, bol, eol) // the body began without a blank line
			return h, nil
		}
		if size += len(p); size > maxHeaderBlock {
			return nil, &LineError{Line: w.lineNo, Length: int64(size), Why: "the header block is larger than 256 KiB"}
		}
	}
}

// entity handles one entity (header read) up to the line that ends it: a
// delimiter of one of the enclosing multiparts, returned for them, or the
// end of input.
func (w *lineWalker) entity(h *header, stops []string, top bool) ([]byte, error) {
	ctype, params, err := mime.ParseMediaType(h.get("content-type"))
	if err != nil {
		ctype, params = "text/plain", nil
	}
	signed := ctype == "multipart/signed" || ctype == "multipart/encrypted" || strings.HasSuffix(ctype, "pkcs7-mime")
	if signed {
		w.signed++
		defer func() { w.signed-- }()
	}
	switch {
	case strings.HasPrefix(ctype, "multipart/") && params["boundary"] != "":
		if err := w.writeHeader(h, nil); err != nil {
			return nil, err
		}
		return w.multipart(params["boundary"], stops)
	case ctype == "message/rfc822" || ctype == "message/global":
		if err := w.writeHeader(h, nil); err != nil {
			return nil, err
		}
		inner, err := w.header()
		if err != nil {
			return nil, err
		}
		return w.entity(inner, stops, false)
	}
	return w.leafBody(h, stops, top)
}

// multipart walks a multipart body with the given boundary.
func (w *lineWalker) multipart(boundary string, stops []string) ([]byte, error) {
	inner := append([]string{boundary}, stops...)
	line, err := w.copyUntil(inner)
	for err == nil {
		b, closing := delimiter(line, inner)
		if b != boundary {
			return line, nil // an enclosing multipart's delimiter: this one was not closed
		}
		if err := w.write(line); err != nil {
			return nil, err
		}
		if closing {
			return w.copyUntil(stops) // the epilogue
		}
		h, err := w.header()
		if err != nil {
			return nil, err
		}
		if line, err = w.entity(h, inner, false); err != nil {
			return nil, err
		}
		if line == nil {
			return nil, io.EOF
		}
	}
	return nil, err
}

// delimiter says which boundary a line delimits, if any, and whether it
// is that boundary's closing delimiter.
func delimiter(line []byte, bounds []string) (string, bool) {
	t := bytes.TrimRight(line, " \t\r\n")
	if !bytes.HasPrefix(t, []byte("--")) {
		return "", false
	}
	for _, b := range bounds {
		if rest, ok := bytes.CutPrefix(t[2:], []byte(b)); ok && (len(rest) == 0 || string(rest) == "--") {
			return b, len(rest) > 0
		}
	}
	return "", false
}

// copyUntil copies lines (a preamble, an epilogue) until a delimiter of
// one of bounds, which it returns unwritten; nil at the end of input.
// Long lines there are broken: nothing reads a preamble or an epilogue.
func (w *lineWalker) copyUntil(bounds []string) ([]byte, error) {
	var col int
	for {
		p, bol, eol, err := w.line()
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if bol && eol {
			if b, _ := delimiter(p, bounds); b != "" {
				return p, nil
			}
		}
		if bol {
			col = 0
		}
		for len(p) > 0 {
			n := min(len(p), maxLineLength-col)
			if n <= 0 {
				if err := w.write([]byte("\r\n")); err != nil {
					return nil, err
				}
				col = 0
				continue
			}
			if err := w.write(p[:n]); err != nil {
				return nil, err
			}
			col += n
			p = p[n:]
		}
	}
}

// leafBody copies or re-encodes a leaf part's body, as the plan says.
func (w *lineWalker) leafBody(h *header, stops []string, top bool) ([]byte, error) {
	idx := w.leaf
	w.leaf++
	cte := strings.ToLower(h.get("content-transfer-encoding"))
	var enc bodyEncoder
	if w.plan != nil && idx < len(w.plan) && w.plan[idx].longest > maxLineLength {
		var err error
		if enc, err = w.reencodeHeader(h, cte, top, w.plan[idx]); err != nil {
			return nil, err
		}
	} else if err := w.writeHeader(h, nil); err != nil {
		return nil, err
	}
	var s leafSurvey
	s.validUTF8 = true
	var cur int64
	var crlf bool // a line break held back: it may belong to the delimiter
	for {
		p, bol, eol, err := w.line()
		if err == io.EOF {
			p = nil
		} else if err != nil {
			return nil, err
		}
		var stop []byte
		if p == nil {
			stop = nil
		} else if bol && eol {
			if b, _ := delimiter(p, stops); b != "" {
				stop = p
			}
		}
		if p == nil || stop != nil {
			if enc != nil {
				if err := enc.Close(); err != nil {
					return nil, err
				}
			}
			if crlf { // the line break before a delimiter is the delimiter's
				if err := w.write([]byte("\r\n")); err != nil {
					return nil, err
				}
			}
			if w.plan == nil {
				w.leaves = append(w.leaves, s)
			}
			return stop, nil
		}
		if crlf {
			if enc != nil {
				_, err = enc.Write([]byte("\r\n"))
			} else {
				err = w.write([]byte("\r\n"))
			}
			if err != nil {
				return nil, err
			}
			crlf = false
		}
		if bol {
			cur = 0
		}
		content := p
		if eol {
			content, crlf = bytes.CutSuffix(p, []byte("\r\n"))
			if !crlf {
				content, crlf = bytes.CutSuffix(p, []byte("\n"))
			}
		}
		cur += int64(len(content))
		if w.plan == nil {
			s.note(content)
			if cur > s.longest {
				s.longest = cur
			}
			if cur > maxLineLength && w.refusal == nil && w.signed > 0 {
				w.refusal = &LineError{Line: w.lineNo, Length: cur, Why: "the message is signed (DKIM or S/MIME), so re-encoding it would break the signature"}
			}
		}
		if enc != nil {
			_, err = enc.Write(content)
		} else {
			err = w.write(content)
		}
		if err != nil {
			return nil, err
		}
	}
}

func (s *leafSurvey) note(p []byte) {
	for _, c := range p {
		if c >= 0x80 {
			s.eightBit = true
			break
		}
	}
	if s.eightBit && s.validUTF8 && !utf8.Valid(p) {
		// A piece may end inside a character: judge only whole ones.
		if i := len(p) - utf8.UTFMax; i < 0 || !utf8.Valid(p[:max(i, 0)]) {
			s.validUTF8 = false
		}
	}
}

// reencodeHeader writes a leaf's header with the encoding its body will
// have now, and returns the body's encoder.
func (w *lineWalker) reencodeHeader(h *header, cte string, top bool, s leafSurvey) (bodyEncoder, error) {
	var enc bodyEncoder
	var name string
	switch cte {
	case "base64":
		enc, name = &wrapEncoder{w: w.out, strip: true}, "base64"
	case "quoted-printable":
		enc, name = &wrapEncoder{w: w.out, soft: true}, "quoted-printable"
	case "binary":
		enc, name = newBase64Encoder(w.out), "base64"
	default:
		enc, name = &qpEncoder{qp: quotedprintable.NewWriter(w.out)}, "quoted-printable"
	}
	var add []string
	if top && !h.has("mime-version") {
		add = append(add, "MIME-Version: 1.0\r\n")
	}
	if h.index("content-type") < 0 {
		charset := "us-ascii"
		switch {
		case s.eightBit && s.validUTF8:
			charset = "utf-8"
		case s.eightBit:
			charset = "unknown-8bit"
		}
		add = append(add, "Content-Type: text/plain; charset="+charset+"\r\n")
	}
	add = append(add, "Content-Transfer-Encoding: "+name+"\r\n")
	drop := h.index("content-transfer-encoding")
	if drop >= 0 {
		h.fields = append(h.fields[:drop:drop], h.fields[drop+1:]...)
		h.lineNos = append(h.lineNos[:drop:drop], h.lineNos[drop+1:]...)
	}
	if h.blank == nil {
		h.blank = []byte("\r\n") // the body began at once: it needs its blank line now
	}
	return enc, w.writeHeader(h, add)
}

// writeHeader writes a header block, long fields folded, plus add.
func (w *lineWalker) writeHeader(h *header, add []string) error {
	for i, f := range h.fields {
		if longestLine(f) > maxLineLength {
			folded, ok := foldField(f)
			if !ok {
				return &LineError{Line: h.lineNos[i], Length: int64(longestLine(f)), Why: "it is a header line with no space to fold it at"}
			}
			if w.plan == nil && w.signed > 0 && w.refusal == nil {
				w.refusal = &LineError{Line: h.lineNos[i], Length: int64(longestLine(f)), Why: "the message is signed (DKIM or S/MIME), so folding it would break the signature"}
			}
			f = folded
		}
		if err := w.write(f); err != nil {
			return err
		}
	}
	for _, a := range add {
		if err := w.write([]byte(a)); err != nil {
			return err
		}
	}
	if h.blank != nil {
		return w.write(h.blank)
	}
	return nil
}

// lineContent is a line without its line break: the LF and one CR before
// it (a CR that ends the input counts too: a sender completes it with an
// LF). Any other CR is content and counts towards the line's length.
func lineContent(line []byte) []byte {
	return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
}

func longestLine(p []byte) int {
	longest := 0
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			i = len(p)
		}
		longest = max(longest, len(lineContent(p[:i])))
		p = p[min(i+1, len(p)):]
	}
	return longest
}

// foldField folds a header field's long lines before spaces or tabs,
// keeping lines short; false when a run without a space is too long.
func foldField(f []byte) ([]byte, bool) {
	var out []byte
	for _, line := range bytes.SplitAfter(f, []byte("\n")) {
		content := lineContent(line)
		if len(content) <= maxLineLength {
			out = append(out, line...)
			continue
		}
		for len(content) > qpWidth {
			cut := bytes.LastIndexAny(content[1:min(len(content), maxLineLength)], " \t") + 1
			if cut <= 0 {
				return nil, false
			}
			if cut < qpWidth/2 { // rather a little long than many tiny lines
				if next := bytes.IndexAny(content[qpWidth:min(len(content), maxLineLength)], " \t"); next >= 0 {
					cut = qpWidth + next
				}
			}
			out = append(out, content[:cut]...)
			out = append(out, "\r\n"...)
			content = content[cut:]
		}
		out = append(out, content...)
		out = append(out, "\r\n"...)
	}
	return out, true
}

// bodyEncoder re-encodes a leaf's body; Close ends its last line.
type bodyEncoder interface {
	io.Writer
	Close() error
}

// qpEncoder is quoted-printable text: line breaks written to it stay hard
// breaks.
type qpEncoder struct {
	qp *quotedprintable.Writer
}

func (e *qpEncoder) Write(p []byte) (int, error) { return e.qp.Write(p) }
func (e *qpEncoder) Close() error                { return e.qp.Close() }

// wrapEncoder re-wraps already encoded text: base64 (strip: line breaks
// and spaces dropped, lines of 76) or quoted-printable (soft: "=" breaks
// inserted, never inside an "=XX").
type wrapEncoder struct {
	w     io.Writer
	strip bool
	soft  bool
	col   int
	esc   int // quoted-printable: characters of an escape still to come
}

func (e *wrapEncoder) Write(p []byte) (int, error) {
	var out []byte
	for _, c := range p {
		if e.strip && (c == '\r' || c == '\n' || c == ' ' || c == '\t') {
			continue
		}
		if !e.strip && c == '\n' {
			out = append(out, c)
			e.col = 0
			continue
		}
		if e.strip && e.col == qpWidth {
			out = append(out, '\r', '\n')
			e.col = 0
		}
		if e.soft && e.esc == 0 && e.col >= qpWidth-1 {
			out = append(out, '=', '\r', '\n')
			e.col = 0
		}
		if e.soft {
			if e.esc > 0 {
				e.esc--
			} else if c == '=' {
				e.esc = 2
			}
		}
		out = append(out, c)
		e.col++
	}
	if _, err := e.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (e *wrapEncoder) Close() error {
	if e.strip && e.col > 0 {
		e.col = 0
		_, err := e.w.Write([]byte("\r\n"))
		return err
	}
	return nil
}

// base64Encoder is base64 in lines of 76.
type base64Encoder struct {
	wrap *wrapEncoder
	enc  io.WriteCloser
}

func newBase64Encoder(w io.Writer) *base64Encoder {
	wrap := &wrapEncoder{w: w, strip: true}
	return &base64Encoder{wrap: wrap, enc: base64.NewEncoder(base64.StdEncoding, wrap)}
}

func (e *base64Encoder) Write(p []byte) (int, error) { return e.enc.Write(p) }

func (e *base64Encoder) Close() error {
	if err := e.enc.Close(); err != nil {
		return err
	}
	return e.wrap.Close()
}
