package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/inflight-dev/inflight/test/testutil"
)

// dial is a new connection, as Envoy opens one to an endpoint still in its
// EDS after the old ones got GOAWAY.
func dial(t *testing.T, addr string) extprocv3.ExternalProcessorClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return extprocv3.NewExternalProcessorClient(cc)
}

// waitStatus polls (bounded) until GET url answers code.
func waitStatus(t *testing.T, url string, code int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := (&http.Client{Timeout: time.Second}).Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == code {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d (%v)", url, code, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDrainCountsNewStreamsThenReleasesOnce runs the app on real sockets and
// "SIGTERMs" it (its context ends): /readyz fails at once and snapshots say
// draining; a stream opened 0.3 s later, on a new connection, is still
// counted; an open stream that finishes during the drain is released by its
// own end; at the drain timeout the rest are cut and each is released
// exactly once.
func TestDrainCountsNewStreamsThenReleasesOnce(t *testing.T) {
	opts := DefaultOptions()
	opts.GRPCListen, opts.AdminListen, opts.ReplicaName = testutil.FreeAddr(t), testutil.FreeAddr(t), "drain-0"
	opts.CallerIdentity = identityTrustAttributes
	opts.DrainDelay, opts.DrainTimeout = 3*time.Second, time.Second
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, sigterm := context.WithCancel(context.Background())
	a, err := newApp(ctx, opts, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.serve(ctx) }()
	admin := "http://" + opts.AdminListen
	waitStatus(t, admin+"/readyz", http.StatusOK)

	c := dial(t, opts.GRPCListen)
	finishing := openStream(t, c, "llama-0") // ends during the drain
	cut := []*heldStream{openStream(t, c, "llama-0"), openStream(t, c, "llama-1")}
	defer func() {
		for _, s := range cut {
			s.cancel()
		}
	}()

	sigterm()
	t0 := time.Now()
	waitStatus(t, admin+"/readyz", http.StatusServiceUnavailable)
	if s := snapshotAt(t, opts.AdminListen); !s.Draining {
		t.Fatal("snapshot does not say draining after SIGTERM")
	}
	time.Sleep(time.Until(t0.Add(300 * time.Millisecond)))
	late := openStream(t, dial(t, opts.GRPCListen), "llama-2")
	if late == nil {
		t.Fatal("a stream opened 0.3 s after SIGTERM was refused")
	}
	defer late.cancel()
	if inFlight, _ := countsAt(t, opts.AdminListen, "llama-2"); inFlight != 1 {
		t.Fatalf("the stream opened 0.3 s after SIGTERM is not counted: in flight %d", inFlight)
	}
	finishing.finish(t)

	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not return after the drain delay and timeout")
	}
	var started, completed uint64
	var inFlight int64
	for _, r := range a.tracker.Records() {
		started += r.Started
		completed += r.Completed
		inFlight += r.InFlight
	}
	if started != 4 || completed != 4 || inFlight != 0 {
		t.Fatalf("after the drain: started %d, completed %d, in flight %d; want 4, 4, 0 (each request released exactly once)", started, completed, inFlight)
	}
	if a.metrics.OpenStreams() != 0 {
		t.Fatalf("%d streams still open after the drain", a.metrics.OpenStreams())
	}
}

// TestSIGTERMRealBinary: the real binary, a real SIGTERM. A stream opened
// 0.3 s after it is counted, the process exits 0 after --drain-delay and
// --drain-timeout, having cut the streams still open, and its last log line
// says every started request was completed.
func TestSIGTERMRealBinary(t *testing.T) {
	bin := buildBinary(t)
	grpcAddr, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	cmd := exec.Command(bin, "--grpc-listen", grpcAddr, "--admin-listen", admin, "--replica-name", "sigterm",
		"--caller-identity", "trust-attributes", "--drain-delay", "3s", "--drain-timeout", "1s", "--log-format", "json")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()
	waitReady(t, admin)
	held := openStream(t, dial(t, grpcAddr), "llama-0")
	defer held.cancel()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(time.Until(t0.Add(300 * time.Millisecond)))
	late := openStream(t, dial(t, grpcAddr), "llama-1")
	if late == nil {
		t.Fatal("a stream opened 0.3 s after SIGTERM was refused")
	}
	defer late.cancel()
	if inFlight, _ := countsAt(t, admin, "llama-1"); inFlight != 1 {
		t.Fatalf("the stream opened 0.3 s after SIGTERM is not counted: in flight %d", inFlight)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30 s after SIGTERM\n%s", logs.String())
	}
	var last struct {
		Msg       string `json:"msg"`
		InFlight  int64  `json:"in_flight_at_exit"`
		Started   uint64 `json:"started"`
		Completed uint64 `json:"completed"`
	}
	sc := bufio.NewScanner(&logs)
	for sc.Scan() {
		var l struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "stopped" {
			_ = json.Unmarshal(sc.Bytes(), &last)
		}
	}
	if last.Msg != "stopped" || last.Started != 2 || last.Completed != 2 || last.InFlight != 0 {
		t.Fatalf("final counts %+v; want 2 started, 2 completed, 0 in flight\n%s", last, logs.String())
	}
}
