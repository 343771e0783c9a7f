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
// with the shipped examples the istio package's tests keep up to date.
func TestEnvoyFilterMatchesShippedExample(t *testing.T) {
	for file, args := range map[string][]string{
		"observe-sidecar.yaml":                 {"--namespace", "models", "--selector", "app=vllm", "--profile", "observe"},
		"control-outbound.yaml":                {"--namespace", "apps", "--selector", "app=chat-frontend", "--profile", "control", "--outbound", "--port", "8000"},
		"control-gateway-stream-timeouts.yaml": {"--gateway", "--profile", "control", "--stream-timeouts", "10m"},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), append([]string{"envoyfilter"}, args...), &out, &errb); err != nil {
			t.Fatalf("%s: run: %v (stderr %s)", file, err, errb.String())
		}
		want, err := os.ReadFile(filepath.Join("..", "..", "istio", "examples", file))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("CLI output differs from istio/examples/%s:\n%s", file, out.String())
		}
	}
}

func TestEnvoyFilterErrors(t *testing.T) {
	for _, args := range [][]string{
		{"envoyfilter", "--namespace", "models"},
		{"envoyfilter", "--namespace", "models", "--selector", "app=vllm", "--profile", "fast"},
		{"envoyfilter", "--selector", "app"},
		{"envoyfilter", "--namespace", "models", "--selector", "app=vllm", "extra"},
		{"envoyfilter", "--namespace", "apps", "--selector", "app=fe", "--outbound", "--profile", "control"},
		{"envoyfilter", "--gateway", "--stream-timeouts", "5m"},
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
