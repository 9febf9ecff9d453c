// Package logcheck holds log output to the log's contract, for tests:
// every line is one JSON object with no key twice; every warn and error
// line carries exactly one remedy; a duration is whole milliseconds in a
// field named *_ms (a bare "took" or "probe_every" is an error).
//
// The test helpers that capture a relay's log (app's and the command's)
// run it on everything they captured, so every log line the suite makes
// is checked.
package logcheck

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// durationKey matches the names that hold a duration; they must say their
// unit.
var durationKey = regexp.MustCompile(`(^|_)(took|elapsed|duration|interval|every|timeout|wait|delay|age|retry_in)$`)

// Lines checks each line of log and returns one error per broken rule,
// naming the line. Lines that do not start with "{" (a panic, a console
// line written before the logger was set up) are errors too.
func Lines(log string) []error {
	var errs []error
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		for _, err := range checkLine(line) {
			errs = append(errs, fmt.Errorf("log line %d: %w: %s", n, err, shorten(line)))
		}
	}
	return errs
}

func checkLine(line []byte) []error {
	keys, values, err := topLevel(line)
	if err != nil {
		return []error{fmt.Errorf("not one JSON object: %v", err)}
	}
	var errs []error
	seen := map[string]int{}
	for _, k := range keys {
		seen[k]++
		if seen[k] == 2 {
			errs = append(errs, fmt.Errorf("key %q twice", k))
		}
		if durationKey.MatchString(k) {
			errs = append(errs, fmt.Errorf("duration %q without a unit (name it %s_ms, in milliseconds)", k, k))
		}
	}
	var level string
	json.Unmarshal(values["level"], &level)
	if (level == "warn" || level == "error") && seen["remedy"] == 0 {
		errs = append(errs, fmt.Errorf("a %s line without a remedy", level))
	}
	return errs
}

// topLevel returns a JSON object's keys in order, duplicates kept, and
// their raw values (the last of each).
func topLevel(line []byte) ([]string, map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, nil, fmt.Errorf("does not start an object")
	}
	var keys []string
	values := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k, ok := t.(string)
		if !ok {
			return nil, nil, fmt.Errorf("a key that is not a string")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		keys = append(keys, k)
		values[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("more after the object")
	}
	return keys, values, nil
}

func shorten(line []byte) string {
	if len(line) > 300 {
		return string(line[:300]) + "…"
	}
	return string(line)
}
