package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/testutil"
)

func TestValidateNamesFlagValueAndRange(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--grpc-listen=9002"}, []string{`--grpc-listen="9002"`, "host:port"}},
		{[]string{"--grpc-listen=:9090"}, []string{"both", "must differ"}},
		{[]string{"--replica-name="}, []string{"--replica-name is empty"}},
		{[]string{"--max-targets=0"}, []string{"--max-targets=0", "1 to 100000"}},
		{[]string{"--drain-timeout=-1s"}, []string{"--drain-timeout=-1s", "0s to 10m"}},
		{[]string{"--log-level=loud"}, []string{`--log-level="loud"`}},
	}
	for _, c := range cases {
		err := run(context.Background(), c.args)
		if err == nil {
			t.Errorf("%v: accepted", c.args)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", c.args, err, w)
			}
		}
	}
	o := DefaultOptions()
	o.ReplicaName = "x"
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// TestRunServesAndDrains runs the binary's run(): it serves the gRPC health
// service and the admin endpoints, and returns cleanly when its context ends.
func TestRunServesAndDrains(t *testing.T) {
	grpcAddr, adminAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--grpc-listen", grpcAddr, "--admin-listen", adminAddr,
			"--replica-name", "test-0", "--drain-timeout", "1s", "--log-level", "error"})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not return after its context ended")
		}
	}()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 20s: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	resp, err := client.Get("http://" + adminAddr + "/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	var s extproc.Snapshot
	err = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if err != nil || s.Version != extproc.SnapshotVersion || s.Replica != "test-0" || len(s.BootID) != 16 {
		t.Fatalf("snapshot %+v, %v", s, err)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	h, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v, %v", h, err)
	}
}
