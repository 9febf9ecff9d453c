package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/icloud-relay/icloud-relay/internal/redact"
)

func TestRedactsSecretsInEveryField(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := New(Options{Level: "debug", Format: "json", Redactor: redact.New("hunter2-pass", `q"uote-pw`, "ab")}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Str("remedy", "the password hunter2-pass was wrong").Msg("auth hunter2-pass failed")
	log.Error().Err(errors.New(`dial: q"uote-pw`)).Msg("x")
	log.Info().Msg("about tabs") // a 2-byte secret is not masked
	out := buf.String()
	if strings.Contains(out, "hunter2-pass") || strings.Contains(out, `q\"uote-pw`) {
		t.Fatalf("secret leaked: %s", out)
	}
	if !strings.Contains(out, "[REDACTED]") || !strings.Contains(out, "about tabs") {
		t.Fatalf("output: %s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("redaction broke JSON: %s", line)
		}
		if _, ok := m["time"]; !ok {
			t.Fatalf("no time field: %s", line)
		}
	}
}

func TestConsoleFormatAndLevel(t *testing.T) {
	var buf bytes.Buffer
	log, _, _ := New(Options{Level: "warn", Format: "console"}, &buf)
	log.Info().Msg("hidden")
	log.Warn().Str("stage", "tls").Msg("shown")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, "shown") || !strings.Contains(out, "stage=tls") || strings.HasPrefix(out, "{") {
		t.Fatalf("console output: %q", out)
	}
}

func TestLogFileRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "relay.log")
	log, closer, err := New(Options{Level: "info", Format: "json", File: path, MaxSize: 2000, MaxFiles: 2}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		log.Info().Int("n", i).Str("pad", strings.Repeat("x", 100)).Msg("line")
	}
	closer.Close()
	for _, name := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(name)
		if err != nil || st.Size() == 0 || st.Size() > 2000 {
			t.Fatalf("%s: %v, size %d", name, err, st.Size())
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", name, st.Mode())
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Fatal("more old files kept than max_files")
	}
	last, _ := os.ReadFile(path)
	if !strings.Contains(string(last), `"n":99`) {
		t.Fatal("the newest lines are not in the current file")
	}
}

// The log file names senders and recipients: an existing one that others
// could read is made its owner's alone when the relay opens it.
func TestTheLogFileIsPrivate(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("modes: Windows gets a DACL (internal/private tests it)")
	}
	path := filepath.Join(t.TempDir(), "relay.log")
	os.WriteFile(path, nil, 0o644)
	_, closer, err := New(Options{File: path, Redactor: redact.New()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	closer.Close()
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Fatalf("log file mode %o, want 600", info.Mode().Perm())
	}
}
