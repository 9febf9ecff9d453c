package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchmarkSmoke runs the benchmark briefly, as CI does: it must run end
// to end with no message refused. The figures are not judged here.
func TestBenchmarkSmoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "icloud-relay")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/icloud-relay").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var out bytes.Buffer
	rep, err := Run(context.Background(), Options{Binary: bin, Concurrency: []int{1, 4}, Messages: 20, MessageSize: 4096,
		SyncWindow: "10s", BigMessage: true, Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if len(rep.Results) != 4 {
		t.Fatalf("results: %+v", rep.Results)
	}
	for _, r := range rep.Results {
		if r.Refused != 0 || r.P50 <= 0 || r.EndToEnd <= 0 {
			t.Fatalf("%s at %d: %+v", r.Mode, r.Concurrency, r)
		}
		if r.Mode == "relay" && r.Logins > 2 {
			t.Fatalf("relay logged in %d times for %d messages: no connection reuse", r.Logins, r.Messages)
		}
	}
	if !strings.Contains(out.String(), "relay / direct") {
		t.Fatal("no ratios printed")
	}
}
