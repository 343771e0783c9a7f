package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"batch", func(o *Options) { o.Batch = 0 }, "-batch=0: want an integer between 1 and 1024"},
		{"prefill", func(o *Options) { o.PrefillTPS = 0 }, "-prefill-tps=0"},
		{"ms per token", func(o *Options) { o.MsPerToken = -1 }, "-ms-per-token=-1"},
		{"cold start", func(o *Options) { o.ColdStart = 2 * time.Hour }, "-cold-start=2h0m0s: want a duration between 0s and 1h"},
		{"max replicas", func(o *Options) { o.MaxReplicas = 0 }, "-max-replicas=0"},
		{"parallel", func(o *Options) { o.Parallel = 0 }, "-parallel=0"},
		{"out", func(o *Options) { o.Out = "" }, "-out="},
		{"nothing to run", func(o *Options) { o.Trace, o.Synthetic = "", false }, "-trace="},
		{"held-out not seeds", func(o *Options) { o.HeldOut = "2,x" }, "-heldout=2,x: want comma-separated seeds"},
		{"held-out is the seed", func(o *Options) { o.HeldOut = "1" }, "seed 1 is the -seed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := DefaultOptions()
			c.mutate(&o)
			err := o.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	err := run([]string{"-batch", "0", "-parallel", "0"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-batch=0") || !strings.Contains(err.Error(), "-parallel=0") {
		t.Fatalf("want both flags named, got %v", err)
	}
}

func TestRunRejectsUnknownNames(t *testing.T) {
	for _, args := range [][]string{
		{"-trace", "", "-traces", "nope", "-out", t.TempDir()},
		{"-trace", "", "-policies", "nope", "-out", t.TempDir()},
	} {
		if err := run(args, io.Discard); err == nil || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("%v: want the unknown name reported, got %v", args, err)
		}
	}
}

// make sim's default trace loads from a directory with nothing beside it
// (a clone has no ../shared).
func TestDefaultTraceNeedsNothingOutsideTheRepository(t *testing.T) {
	t.Chdir(t.TempDir())
	err := run([]string{"-synthetic=false", "-ablation=false", "-policies", "static-peak", "-quiet", "-out", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
}
