// Package logging sets up zerolog for icloud-relay: readable console lines on
// a terminal, JSON for files, pipes and services, and a last line of defence
// that masks known secrets in anything written.
//
// The vocabulary is in events.go: the field names (time, level, message,
// and where they apply queue_id, message_id, from, to, stage, class, port,
// smtp_code, enhanced_code, error, remedy, attempt, next_retry, *_ms
// durations) and one function per event about a message or the upstream,
// so that the same event always has the same message and fields. A warn or
// error line carries exactly one remedy (internal/logcheck holds the
// tests' logs to that).
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/internal/redact"
)

// Options choose level, format and destination.
type Options struct {
	Level  string // trace, debug, info, warn, error
	Format string // console, json, or "" for console on a terminal else JSON
	File   string // also write JSON here when set
	// MaxSize and MaxFiles rotate File: past MaxSize bytes it is renamed
	// and at most MaxFiles old files are kept.
	MaxSize  int64
	MaxFiles int
	// Redactor masks secrets wherever they appear in output.
	Redactor *redact.Redactor
	// Ring, when set, also keeps the last lines (JSON, info and above).
	Ring *Ring
}

// New returns a logger writing to w (usually stderr) and, if set, the file.
// The returned closer closes the file.
func New(opts Options, w io.Writer) (zerolog.Logger, io.Closer, error) {
	level, err := zerolog.ParseLevel(opts.Level)
	if err != nil || opts.Level == "" {
		level = zerolog.InfoLevel
	}
	format := opts.Format
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			format = "console"
		}
	}
	var out io.Writer = w
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)}
	}
	var closer io.Closer = nopCloser{}
	if opts.File != "" {
		f, err := openRotating(opts.File, opts.MaxSize, opts.MaxFiles)
		if err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("open log file: %w", err)
		}
		out = zerolog.MultiLevelWriter(out, f)
		closer = f
	}
	if opts.Ring != nil {
		out = zerolog.MultiLevelWriter(out, opts.Ring)
	}
	out = levelWriter{opts.Redactor.Writer(out)}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), closer, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// levelWriter keeps a plain writer (the redactor) usable where zerolog
// would ask for a level-aware one. zerolog writes each event in one Write,
// so a secret is never split across calls.
type levelWriter struct{ io.Writer }

func (w levelWriter) WriteLevel(_ zerolog.Level, p []byte) (int, error) { return w.Write(p) }
