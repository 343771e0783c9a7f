package stack

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// A process that ignores SIGTERM and has a background grandchild: Stop must
// kill the whole group after the grace period, leaving nothing behind.
func TestStopKillsTheGroup(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	p, err := StartProc("stubborn", dir, "/bin/sh", "-c", `trap "" TERM; sleep 60 & echo > "$0"; sleep 60; wait`, ready)
	if err != nil {
		t.Fatal(err)
	}
	// The trap must be in place before SIGTERM is sent.
	if err := Poll(context.Background(), 10*time.Second, 10*time.Millisecond, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	}); err != nil {
		t.Fatalf("the script did not start: %v", err)
	}
	if !slices.Contains(Children(), p.Pid()) {
		t.Fatalf("Children() = %v, want it to list %d", Children(), p.Pid())
	}
	if p.GroupGone() {
		t.Fatal("GroupGone before Stop")
	}
	if err := p.Stop(300 * time.Millisecond); err == nil {
		t.Error("Stop of a process ignoring SIGTERM: want the killed error")
	}
	if !p.GroupGone() {
		t.Error("process group still alive after Stop")
	}
	if slices.Contains(Children(), p.Pid()) {
		t.Error("still a child after Stop")
	}
}

func TestStopGraceful(t *testing.T) {
	p, err := StartProc("polite", t.TempDir(), "/bin/sh", "-c", "sleep 60 & wait")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if !p.GroupGone() {
		t.Error("process group still alive after Stop")
	}
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
