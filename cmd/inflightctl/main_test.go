package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnvoyFilterMatchesShippedExample renders through the CLI and compares
// with the shipped example the istio package's tests keep up to date.
func TestEnvoyFilterMatchesShippedExample(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"envoyfilter", "--namespace", "models", "--selector", "app=vllm", "--profile", "observe"}, &out, &errb)
	if err != nil {
		t.Fatalf("run: %v (stderr %s)", err, errb.String())
	}
	want, err := os.ReadFile(filepath.Join("..", "..", "istio", "examples", "observe-sidecar.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("CLI output differs from istio/examples/observe-sidecar.yaml:\n%s", out.String())
	}
}

func TestEnvoyFilterErrors(t *testing.T) {
	for _, args := range [][]string{
		{"envoyfilter", "--namespace", "models"},
		{"envoyfilter", "--namespace", "models", "--selector", "app=vllm", "--profile", "fast"},
		{"envoyfilter", "--selector", "app"},
		{"envoyfilter", "--namespace", "models", "--selector", "app=vllm", "extra"},
		{"nosuch"},
		{},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%q: no error", args)
		} else if out.Len() != 0 {
			t.Errorf("%q: wrote output despite %v", args, err)
		}
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"envoyfilter", "--gateway", "--profile", "control"}, &out, &errb); err != nil || !strings.Contains(out.String(), "context: GATEWAY") {
		t.Errorf("gateway: %v\n%s", err, out.String())
	}
}
