package logging

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/icloud-relay/icloud-relay/internal/redact"
)

// The ring keeps the newest lines at info and above, as JSON whatever the
// console shows, masked like every other output.
func TestRingKeepsTheLastEvents(t *testing.T) {
	ring := NewRing(3)
	red := redact.New("hunter2-secret")
	var console bytes.Buffer
	log, _, err := New(Options{Level: "debug", Format: "console", Redactor: red, Ring: ring}, &console)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug().Msg("not kept")
	for i := 1; i <= 4; i++ {
		log.Info().Str("password", "hunter2-secret").Msg(fmt.Sprintf("event %d", i))
	}
	lines := ring.Lines()
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	for i, want := range []string{"event 4", "event 3", "event 2"} {
		var l struct{ Message, Password string }
		if err := json.Unmarshal(lines[i], &l); err != nil || l.Message != want || l.Password == "hunter2-secret" {
			t.Fatalf("line %d: %s (%v)", i, lines[i], err)
		}
	}
}
