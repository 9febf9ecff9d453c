// Package testenv is what the tests share about the machine they run on.
//
// A test that cannot run here (a tool or a privilege is missing) skips
// with the reason, except in CI, where .ci/run installs everything the
// tests need: there it fails, so that a missing install step cannot hide
// behind a skip.
package testenv

import (
	"os"
	"testing"
)

// InCI reports a CI run: CI=true exactly (CI=false or CI=1 is not one).
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips t for why, or fails it in CI.
func Skip(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s (required in CI)", why)
	}
	t.Skip(why)
}
