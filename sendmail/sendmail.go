// Package sendmail is the sendmail-compatible front end: scripts, cron, PHP
// mail() and mail(1) hand a message on standard input to "sendmail", and
// this submits it to the running relay, or, when no relay runs, writes it
// durably into the queue itself so that nothing is lost.
package sendmail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
)

// Exit codes of sendmail (sysexits.h) that callers such as PHP understand.
const (
	ExitOK          = 0
	ExitUsage       = 64 // EX_USAGE
	ExitDataErr     = 65 // EX_DATAERR
	ExitUnavailable = 69 // EX_UNAVAILABLE
	ExitTempFail    = 75 // EX_TEMPFAIL
)

// Modes of the sendmail command line (-b…, -q).
const (
	ModeMessage = ""  // -bm, the default: a message on standard input
	ModeSMTP    = "s" // -bs: SMTP on standard input and output
	ModeList    = "p" // -bp, or linked as mailq: list the queue
	ModeRun     = "q" // -q: deliver the queue now
)

// Options are the sendmail flags that matter here.
type Options struct {
	Mode        string // one of the modes above
	FromHeaders bool   // -t: recipients from To, Cc and Bcc
	IgnoreDots  bool   // -i, -oi: a lone "." does not end the message
	Sender      string // -f, -r: envelope sender
	FullName    string // -F: display name for an added From header
	Rcpts       []string
	Config      string // --config FILE (ours, not sendmail's)
	Help        bool
}

// flags that take an argument and are accepted but have no effect here.
var ignoredWithArg = map[byte]bool{'N': true, 'R': true, 'V': true, 'X': true, 'B': true, 'C': true, 'L': true, 'h': true, 'O': true}

// ParseArgs reads a sendmail command line.
func ParseArgs(args []string) (Options, error) {
	var o Options
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("option %s needs a value", a)
			}
			i++
			return args[i], nil
		}
		switch {
		case a == "--":
			o.Rcpts = append(o.Rcpts, splitRcpts(args[i+1:])...)
			return o, nil
		case a == "--config" || a == "-config":
			v, err := next()
			if err != nil {
				return o, err
			}
			o.Config = v
		case strings.HasPrefix(a, "--config="):
			o.Config = strings.TrimPrefix(a, "--config=")
		case a == "-h" || a == "--help" || a == "-help":
			o.Help = true
		case a == "-t":
			o.FromHeaders = true
		case a == "-i" || a == "-oi":
			o.IgnoreDots = true
		case a == "-f" || a == "-r" || a == "-F":
			v, err := next()
			if err != nil {
				return o, err
			}
			if a == "-F" {
				o.FullName = v
			} else {
				o.Sender = strings.Trim(v, "<>")
			}
		case strings.HasPrefix(a, "-f") || strings.HasPrefix(a, "-r"):
			o.Sender = strings.Trim(a[2:], "<>")
		case strings.HasPrefix(a, "-F"):
			o.FullName = a[2:]
		case a == "-bs":
			o.Mode = ModeSMTP
		case a == "-bp":
			o.Mode = ModeList
		case strings.HasPrefix(a, "-q"):
			o.Mode = ModeRun // -q, -q15m: an interval means nothing here
		case strings.HasPrefix(a, "-o"), strings.HasPrefix(a, "-A"), a == "-v", a == "-U", a == "-m", a == "-em", a == "-bm", a == "-n", a == "-G":
			// Delivery-mode (-odi, -odb …) and similar options: meaningless
			// for a relay, accepted as sendmail does.
		case len(a) == 2 && a[0] == '-' && ignoredWithArg[a[1]]:
			if _, err := next(); err != nil {
				return o, err
			}
		case len(a) > 2 && a[0] == '-' && ignoredWithArg[a[1]]:
		case strings.HasPrefix(a, "-b"):
			return o, fmt.Errorf("mode %s is not supported (-bm, -bs and -bp are)", a)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			return o, fmt.Errorf("unknown option %s", a)
		default:
			o.Rcpts = append(o.Rcpts, splitRcpts([]string{a})...)
		}
	}
	return o, nil
}

func splitRcpts(args []string) []string {
	var out []string
	for _, a := range args {
		for _, r := range strings.Split(a, ",") {
			if r = strings.TrimSpace(r); r != "" {
				out = append(out, strings.Trim(r, "<>"))
			}
		}
	}
	return out
}

// Message is a submission ready for SMTP: envelope and a reader of the data
// with CRLF line endings.
type Message struct {
	From  string
	Rcpts []string
	Data  io.Reader
}

const maxHeader = 1 << 20

// Prepare reads the header block from in, applies -t, -f and -F, drops Bcc,
// and returns the envelope with a reader of the whole message. The body is
// streamed, not read into memory. defaultFrom is used when -f is absent.
func Prepare(o Options, in io.Reader, defaultFrom string) (*Message, error) {
	lr := &lineReader{r: bufio.NewReaderSize(in, 64<<10), ignoreDots: o.IgnoreDots}
	var header []string // one entry per field, continuation lines included
	size := 0
	for {
		line, err := lr.next()
		if err == io.EOF && line == "" {
			break
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		trimmed := strings.TrimRight(line, "\r\n")
		if trimmed == "" {
			break // end of the header block
		}
		size += len(line)
		if size > maxHeader {
			return nil, errors.New("the header block is larger than 1 MiB")
		}
		if (trimmed[0] == ' ' || trimmed[0] == '\t') && len(header) > 0 {
			header[len(header)-1] += "\r\n" + trimmed
		} else if !strings.Contains(trimmed, ":") && len(header) == 0 {
			// No header at all: the input is a bare body.
			lr.unread(line)
			break
		} else {
			header = append(header, trimmed)
		}
		if err == io.EOF {
			break
		}
	}
	m := &Message{From: o.Sender, Rcpts: append([]string(nil), o.Rcpts...)}
	if m.From == "" {
		m.From = defaultFrom
	}
	var out bytes.Buffer
	hasFrom := false
	for _, field := range header {
		name, value, _ := strings.Cut(field, ":")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "from":
			hasFrom = true
		case "to", "cc", "bcc":
			if o.FromHeaders {
				addrs, err := parseAddrs(value)
				if err != nil {
					return nil, fmt.Errorf("cannot read the recipients in the %s header: %w", strings.TrimSpace(name), err)
				}
				m.Rcpts = append(m.Rcpts, addrs...)
			}
		}
		if strings.EqualFold(strings.TrimSpace(name), "bcc") {
			continue // blind copies stay blind
		}
		out.WriteString(field + "\r\n")
	}
	if !hasFrom {
		from := "<" + m.From + ">"
		if o.FullName != "" {
			from = (&mail.Address{Name: o.FullName, Address: m.From}).String()
		}
		out.WriteString("From: " + from + "\r\n")
	}
	out.WriteString("\r\n")
	m.Rcpts = dedupe(m.Rcpts)
	if len(m.Rcpts) == 0 {
		return nil, errors.New("no recipients: give them as arguments, or use -t to take them from the To, Cc and Bcc headers")
	}
	m.Data = io.MultiReader(&out, lr)
	return m, nil
}

func parseAddrs(v string) ([]string, error) {
	v = strings.TrimSpace(strings.ReplaceAll(v, "\r\n", ""))
	if v == "" || v == "undisclosed-recipients:;" {
		return nil, nil
	}
	list, err := mail.ParseAddressList(v)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = a.Address
	}
	return out, nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range in {
		if k := strings.ToLower(r); !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// lineReader yields the input line by line with CRLF endings, ending at
// EOF or, unless ignoreDots, at a line holding a single ".".
type lineReader struct {
	r          *bufio.Reader
	ignoreDots bool
	pending    string
	buf        []byte
	done       bool
}

func (l *lineReader) unread(line string) { l.pending = line + l.pending }

// next returns one line with its CRLF, or io.EOF.
func (l *lineReader) next() (string, error) {
	if l.pending != "" {
		p := l.pending
		l.pending = ""
		return p, nil
	}
	if l.done {
		return "", io.EOF
	}
	line, err := l.r.ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	if line == "" {
		l.done = true
		return "", io.EOF
	}
	body := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if !l.ignoreDots && body == "." {
		l.done = true
		return "", io.EOF
	}
	if err == io.EOF {
		l.done = true
	}
	return body + "\r\n", nil
}

func (l *lineReader) Read(p []byte) (int, error) {
	for len(l.buf) == 0 {
		line, err := l.next()
		if line == "" && err != nil {
			return 0, err
		}
		l.buf = []byte(line)
	}
	n := copy(p, l.buf)
	l.buf = l.buf[n:]
	return n, nil
}
