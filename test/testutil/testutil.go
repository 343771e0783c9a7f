// Package testutil holds the small helpers that tests across the project
// share: the test tiers (Long, SkipUnlessLong), a free loopback address and
// golden-file comparison. It has no state and is imported by tests only.
//
// Tiers: `go test ./...` is the inner loop (unit tests, fuzz seeds, harness
// scenarios, short integration tests). The long tier — exactness at full
// size, the end-to-end test, the real Prometheus, the controller's
// scale-up/scale-down scenarios against the real API server — runs only
// with INFLIGHT_LONG=1, which `make test` and CI always set. A long test
// calls SkipUnlessLong first; its skip message names the variable.
package testutil

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// LongEnv names the environment variable that turns the long tier on.
const LongEnv = "INFLIGHT_LONG"

// Long reports whether the long tier runs (INFLIGHT_LONG=1).
func Long() bool { return os.Getenv(LongEnv) == "1" }

// SkipUnlessLong skips t unless the long tier runs.
func SkipUnlessLong(t testing.TB) {
	t.Helper()
	if !Long() {
		t.Skipf("long tier: set %s=1 to run it (make test and CI do)", LongEnv)
	}
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// FreeLoopbackAddr returns a 127.0.0.1 address whose port was free a moment
// ago, for programs that have no testing.TB (the demo, the load generator).
func FreeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Golden compares got with testdata/name, after rewriting the file first
// when update is set (the caller's -update flag).
func Golden(t testing.TB, name string, got []byte, update bool) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test once with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
