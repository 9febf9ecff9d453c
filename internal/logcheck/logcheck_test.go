package logcheck

import (
	"strings"
	"testing"
)

func TestLines(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // "" means valid
	}{
		{`{"level":"info","message":"delivered","took_ms":12}`, ""},
		{`{"level":"warn","remedy":"do this","message":"x"}`, ""},
		{`{"level":"error","message":"x"}`, "without a remedy"},
		{`{"level":"error","remedy":"a","remedy":"b","message":"x"}`, `key "remedy" twice`},
		{`{"level":"info","took":29.346009,"message":"delivered"}`, `duration "took" without a unit`},
		{`{"level":"warn","probe_every":100,"remedy":"r","message":"x"}`, `duration "probe_every"`},
		{`Dec 1 12:00:00 INF delivered`, "not one JSON object"},
		{`{"level":"info"}{"level":"info"}`, "more after the object"},
	} {
		errs := Lines(tc.line + "\n")
		switch {
		case tc.want == "" && len(errs) > 0:
			t.Errorf("%s: %v, want valid", tc.line, errs)
		case tc.want != "" && (len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.line, errs, tc.want)
		}
	}
}
