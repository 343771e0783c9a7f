package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/scaling/kube"
	"github.com/inflight-dev/inflight/test/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func fixture(t *testing.T) kube.Status {
	t.Helper()
	now := time.Date(2025, 11, 27, 17, 30, 0, 0, time.UTC)
	return kube.Status{
		Version: kube.StatusVersion, Identity: "inflight-controller-0", Leader: true, Time: now,
		ExtprocEndpoints: 2, ExtprocAnswered: 2,
		Workloads: []kube.WorkloadStatus{
			{Namespace: "models", Workload: "llama-chat", Target: 5, Source: "both",
				Last: &kube.DecisionStatus{Time: now.Add(-time.Second), InFlight: 37, Concurrency: 36.4,
					StableDemand: 35.2, PanicDemand: 41.03, Trend: 0.31, PredictedDemand: 38.9, Ready: 7, Starting: 1,
					Requested: 8, Desired: 8, ColdStartSec: 6, Direction: "hold", Reason: "in-flight 38.9, target 5 per replica"},
				LastChange: &kube.DecisionStatus{Time: now.Add(-75 * time.Second), Direction: "up", From: 7, Desired: 8,
					Written: true, Reason: "in-flight 38.9, target 5 per replica; rising 0.31/s"}},
			{Namespace: "models", Workload: "mistral-batch", Target: 2, Source: "edge",
				ConfigError: `inflight.dev/window: "1ms" is invalid; want a duration between 6s and 1h0m0s`,
				Last: &kube.DecisionStatus{Time: now.Add(-time.Second), InFlight: 12, Held: 4, StableDemand: 14, PanicDemand: 30,
					Panicking: true, Trend: -1.5, Ready: 3, Requested: 3, Desired: 6, Direction: "up", Reason: "in-flight 30.0, target 2 per replica; panic"}},
			{Namespace: "team-b", Workload: "embedder", Target: 0.5},
		},
	}
}

func serve(t *testing.T, st kube.Status) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestStatusGolden(t *testing.T) {
	leader := serve(t, fixture(t))
	follower := kube.Status{Version: kube.StatusVersion, Identity: "inflight-controller-1", Workloads: []kube.WorkloadStatus{}}
	fol := serve(t, follower)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"status.golden", []string{"status", "--controller", fol.URL + "," + leader.URL}},
		{"status-wide.golden", []string{"status", "--wide", "--controller", leader.URL + "/"}},
		{"status-follower.golden", []string{"status", "--controller", fol.URL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if err := run(context.Background(), tc.args, &out, &errb); err != nil {
				t.Fatalf("run: %v (stderr %q)", err, errb.String())
			}
			if errb.Len() != 0 {
				t.Errorf("stderr: %q", errb.String())
			}
			testutil.Golden(t, tc.name, out.Bytes(), *update)
		})
	}
}

func TestStatusUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"status", "--controller", url, "--timeout", "2s"}, &out, &errb)
	if err == nil {
		t.Fatal("want an error for an unreachable controller")
	}
	for _, want := range []string{"no controller reachable", url, "unreachable"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if out.Len() != 0 {
		t.Errorf("printed a table anyway: %q", out.String())
	}
}

func TestStatusOneOfTwoUnreachable(t *testing.T) {
	leader := serve(t, fixture(t))
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"status", "--controller", deadURL + "," + leader.URL}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "warning: controller "+deadURL) {
		t.Errorf("stderr %q: want a warning naming %s", errb.String(), deadURL)
	}
	if !strings.Contains(out.String(), "llama-chat") {
		t.Errorf("the reachable leader's table is missing:\n%s", out.String())
	}
}

func TestStatusBadResponses(t *testing.T) {
	wrong := fixture(t)
	wrong.Version = "inflight.dev/controller-status/v9"
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want string
	}{
		{"http error", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) }, "500"},
		{"not json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) }, "decoding"},
		{"other version", func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(wrong) }, "v9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.h)
			defer srv.Close()
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"status", "--controller", srv.URL}, &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStatusArgs(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"status", "extra"}, &out, &errb); err == nil {
		t.Error("status with an argument: want an error")
	}
}

// Every invalid flag is reported at once, naming it.
func TestStatusFlagErrors(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"status", "--controller", " , ", "--timeout", "0s"}, &out, &errb)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`--controller=" , "`, "--timeout=0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
