package main

import (
	"io"
	"os"
	"path/filepath"
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
		{"slowdown", func(o *Options) { o.Slowdown = -1 }, "-slowdown=-1: want a number between 0 and 10"},
		{"max replicas", func(o *Options) { o.MaxReplicas = 0 }, "-max-replicas=0"},
		{"parallel", func(o *Options) { o.Parallel = 0 }, "-parallel=0"},
		{"nothing to run", func(o *Options) { o.Trace, o.Synthetic = "", false }, "-trace="},
		{"held-out not seeds", func(o *Options) { o.HeldOut = "2,x" }, "-heldout=2,x: want comma-separated seeds"},
		{"held-out is the seed", func(o *Options) { o.HeldOut = "1" }, "seed 1 is the -seed"},
		{"grid not numbers", func(o *Options) { o.Grid = "1,x" }, "-grid=1,x: want comma-separated multipliers"},
		{"grid empty", func(o *Options) { o.Grid = " " }, "-grid"},
		{"unknown policy", func(o *Options) { o.Policies = "inflight,static-peak" }, "-policies=inflight,static-peak: want names among inflight, "},
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
		// One known name beside an unknown one is no excuse to drop it.
		{"-trace", "", "-traces", "step,nope", "-out", t.TempDir()},
		{"-trace", "", "-policies", "static,nope", "-out", t.TempDir()},
	} {
		if err := run(args, io.Discard); err == nil || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("%v: want the unknown name reported, got %v", args, err)
		}
	}
}

// quick is a run small enough for a test: no synthetic traces, no
// ablation, no variants, static only.
var quick = []string{"-synthetic=false", "-ablation=false", "-variants=false", "-policies", "static", "-quiet"}

// make sim's default trace loads from a directory with nothing beside it
// (a clone has no ../shared).
func TestDefaultTraceNeedsNothingOutsideTheRepository(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := run(append(quick, "-out", t.TempDir()), io.Discard); err != nil {
		t.Fatal(err)
	}
}

// The default -out is the repository's scaling/sim/results from any of its
// directories, and outside it the command asks for -out instead of
// writing next to the working directory.
func TestDefaultOut(t *testing.T) {
	wd, _ := os.Getwd()
	root := filepath.Dir(filepath.Dir(wd)) // cmd/inflight-sim → the repository
	t.Chdir(filepath.Join(root, "scaling", "kube"))
	got, err := DefaultOptions().outDir()
	if err != nil || got != filepath.Join(root, "scaling", "sim", "results") {
		t.Fatalf("inside the repository: %q, %v", got, err)
	}
	t.Chdir(t.TempDir())
	if _, err := DefaultOptions().outDir(); err == nil || !strings.Contains(err.Error(), "give -out") {
		t.Fatalf("outside the repository: want an error asking for -out, got %v", err)
	}
	if err := run(quick, io.Discard); err == nil || !strings.Contains(err.Error(), "-out") {
		t.Fatalf("run outside the repository without -out: %v", err)
	}
}

func writeTrace(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("TIMESTAMP,ContextTokens,GeneratedTokens\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rows is n requests, one a second, of 100 prompt tokens and 1 generated.
func rows(n int) string {
	var b strings.Builder
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		b.WriteString(start.Add(time.Duration(i)*time.Second).Format("2006-01-02 15:04:05.0000000") + ",100,1\n")
	}
	return b.String()
}

// -trace a.csv,b.csv replays both in one run: one combined table, a
// timeline CSV per policy with both traces.
func TestSeveralTracesOneTable(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	a := writeTrace(t, dir, "alpha.csv", rows(400))
	b := writeTrace(t, dir, "beta.csv", rows(300))
	if err := run(append(quick, "-trace", a+","+b, "-out", out), io.Discard); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	head := string(md)[strings.Index(string(md), "## GPU-hours"):]
	head = head[:strings.Index(head, "## Targets")]
	if !strings.Contains(head, "| alpha |") || !strings.Contains(head, "| beta |") {
		t.Fatalf("the headline table lacks a trace:\n%s", head)
	}
	tl, err := os.ReadFile(filepath.Join(out, "timelines", "static.csv"))
	if err != nil || !strings.Contains(string(tl), "\nalpha,") || !strings.Contains(string(tl), "\nbeta,") {
		t.Fatalf("timeline: %v\n%.200s", err, tl)
	}
	// The same name twice is refused.
	if err := run(append(quick, "-trace", a+","+a, "-out", out), io.Discard); err == nil || !strings.Contains(err.Error(), "both named") {
		t.Fatalf("duplicate trace: %v", err)
	}
}

// A malformed row is reported with the file as given and its line.
func TestBadCSVNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	p := writeTrace(t, dir, "bad.csv", rows(3)+"2024-01-01 00:00:09.0000000,x,2\n")
	err := run(append(quick, "-trace", p, "-out", t.TempDir()), io.Discard)
	if err == nil || !strings.Contains(err.Error(), p+":5:") {
		t.Fatalf("want %s:5 named, got %v", p, err)
	}
}

// -readme replaces only the generated part of the file, between its
// markers, and refuses a file without them.
func TestReadme(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "README.md")
	before, after := "# title\n\nprose before\n", "\nprose after\n"
	if err := os.WriteFile(p, []byte(before+ReadmeBegin+"\nold tables\n"+ReadmeEnd+after), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(append(quick, "-out", t.TempDir(), "-readme", p), io.Discard); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	s := string(b)
	if !strings.HasPrefix(s, before+ReadmeBegin) || !strings.HasSuffix(s, ReadmeEnd+after) ||
		strings.Contains(s, "old tables") || !strings.Contains(s, "GPU-hours at p99 queue wait ≤ 10 s") {
		t.Fatalf("README after -readme:\n%s", s)
	}
	if err := os.WriteFile(p, []byte("no markers\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(append(quick, "-out", t.TempDir(), "-readme", p), io.Discard); err == nil || !strings.Contains(err.Error(), "markers") {
		t.Fatalf("no markers: %v", err)
	}
}
