package testutil

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestFreeAddrIsLoopbackAndFree(t *testing.T) {
	addr := FreeAddr(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr() = %q", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port is not free: %v", err)
	}
	l.Close()
}

func TestGoldenWritesThenCompares(t *testing.T) {
	dir := t.TempDir()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chdir(wd) })
	if err := os.Mkdir("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	Golden(t, "x.golden", []byte("a\n"), true)
	if b, _ := os.ReadFile(filepath.Join("testdata", "x.golden")); string(b) != "a\n" {
		t.Fatalf("update wrote %q", b)
	}
	Golden(t, "x.golden", []byte("a\n"), false)
	ft := &testing.T{}
	done := make(chan struct{})
	go func() { defer close(done); Golden(ft, "x.golden", []byte("b\n"), false) }()
	<-done
	if !ft.Failed() {
		t.Fatal("a differing output passed")
	}
}

func TestLongFollowsTheEnvironment(t *testing.T) {
	t.Setenv(LongEnv, "1")
	if !Long() {
		t.Fatal("INFLIGHT_LONG=1: Long() = false")
	}
	SkipUnlessLong(t) // must not skip
	t.Setenv(LongEnv, "")
	if Long() {
		t.Fatal("INFLIGHT_LONG unset: Long() = true")
	}
	skipped := false
	ft := &testing.T{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { skipped = ft.Skipped() }()
		SkipUnlessLong(ft)
	}()
	<-done
	if !skipped {
		t.Fatal("INFLIGHT_LONG unset: SkipUnlessLong did not skip")
	}
}
