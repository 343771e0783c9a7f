package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/test/testutil"
)

var (
	heldStreams = flag.Int("held-streams", 2000, "TestHeldStreamsMemory: streams held open against the real binary (issue 10's target: 20000)")
	heldTargets = flag.Int("held-targets", 500, "TestHeldStreamsMemory: distinct targets created first (the shipped cap: 4000)")
	heldCap     = flag.Int("held-cap", 1500, "TestHeldStreamsMemory: the binary's --max-open-streams (shipped: 10000)")
	heldMemLim  = flag.String("held-gomemlimit", "", "TestHeldStreamsMemory: GOMEMLIMIT of the binary (default: none, so the binary sets 7/8 of --memory-limit 256Mi)")
)

// TestHeldStreamsMemory builds and runs the real extproc binary, creates
// -held-targets targets, then holds -held-streams streams open at once (as
// many connections as Envoy would open under --max-streams-per-connection)
// while /metrics is scraped twice at once, and checks that the process
// stays under the 256 MiB container limit and keeps counting: the streams
// under the cap are in flight, the rest were answered at once and counted
// as untracked, a new request is still counted, and every count returns to
// zero. The full target of issue 10:
//
//	go test ./cmd/extproc -run TestHeldStreamsMemory -v -held-streams 20000 -held-targets 4000 -held-cap 10000
func TestHeldStreamsMemory(t *testing.T) {
	bin := buildBinary(t)
	grpcAddr, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	cmd := exec.Command(bin, "--grpc-listen", grpcAddr, "--admin-listen", admin, "--replica-name", "mem",
		"--caller-identity", "trust-attributes", "--log-level", "error", "--drain-delay", "0s", "--drain-timeout", "1s",
		"--max-targets", strconv.Itoa(max(*heldTargets, extproc.DefaultMaxTargets)),
		"--max-targets-per-namespace", strconv.Itoa(max(*heldTargets, 1)),
		"--max-open-streams", strconv.Itoa(*heldCap))
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+*heldMemLim, "MEMORY_LIMIT=")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitReady(t, admin)

	conns := *heldStreams/DefaultOptions().MaxStreamsPerConnection + 1
	var clients []extprocv3.ExternalProcessorClient
	for range conns {
		cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		clients = append(clients, extprocv3.NewExternalProcessorClient(cc))
	}
	// The targets: one short request each.
	for i := range max(*heldTargets, 1) {
		s := openStream(t, clients[i%conns], fmt.Sprintf("llama-7d9f8b6c5d-%05d", i))
		s.finish(t)
	}
	rssTargets := procStatus(t, cmd.Process.Pid, "VmRSS:")

	// The held streams, all to the first pod.
	const heldPod = "llama-7d9f8b6c5d-00000"
	release := make(chan struct{})
	var wg sync.WaitGroup
	var opened atomic.Int64
	for i := range *heldStreams {
		wg.Go(func() {
			s := openStream(t, clients[i%conns], heldPod)
			opened.Add(1)
			<-release
			s.finish(t)
		})
	}
	for deadline := time.Now().Add(3 * time.Minute); opened.Load() < int64(*heldStreams); {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d streams opened in 3 minutes", opened.Load(), *heldStreams)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Two scrapes at once, as two Prometheus replicas would.
	var scrapeBytes [2]int64
	var sw sync.WaitGroup
	for i := range scrapeBytes {
		sw.Go(func() { scrapeBytes[i] = get(t, "http://"+admin+"/metrics") })
	}
	sw.Wait()
	held, untracked := countsAt(t, admin, heldPod)
	// Still counting: a new request (over the cap when the held streams
	// fill it, so it must show up as untracked; else in flight).
	extra := openStream(t, clients[0], heldPod)
	held2, untracked2 := countsAt(t, admin, heldPod)
	extra.finish(t)
	rss := procStatus(t, cmd.Process.Pid, "VmRSS:")
	hwm := procStatus(t, cmd.Process.Pid, "VmHWM:")
	close(release)
	wg.Wait()

	t.Logf("%d targets: RSS %.1f MiB; %d streams held open (%d tracked in flight, %d answered at once as untracked) with %d connections and two /metrics scrapes of %.1f MiB: RSS %.1f MiB, peak RSS %.1f MiB (GOMEMLIMIT %q)",
		*heldTargets, rssTargets, *heldStreams, held, untracked, conns, float64(scrapeBytes[0])/(1<<20), rss, hwm, *heldMemLim)
	wantHeld := int64(min(*heldStreams, *heldCap))
	if held != wantHeld || untracked != uint64(*heldStreams)-uint64(wantHeld) {
		t.Fatalf("held %d, untracked %d; want %d and %d", held, untracked, wantHeld, *heldStreams-int(wantHeld))
	}
	if held2+int64(untracked2) != held+int64(untracked)+1 {
		t.Fatalf("a request during the hold was not counted: %d+%d then %d+%d", held, untracked, held2, untracked2)
	}
	if hwm >= 256 {
		t.Fatalf("peak RSS %.1f MiB: over the 256 MiB container limit", hwm)
	}
	// Every count returns to zero.
	for deadline := time.Now().Add(time.Minute); ; {
		s := snapshotAt(t, admin)
		var inFlight int64
		for _, r := range s.Targets {
			inFlight += r.InFlight
		}
		if inFlight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d still in flight a minute after every stream ended", inFlight)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// heldStream is one Envoy-like side stream (control profile): request
// headers sent and answered.
type heldStream struct {
	st     extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
}

func openStream(t *testing.T, c extprocv3.ExternalProcessorClient, pod string) *heldStream {
	attrs, err := structpb.NewStruct(map[string]any{
		mesh.AttrPod: pod, mesh.AttrNamespace: "models", mesh.AttrWorkload: "llama",
		mesh.AttrCluster: "inbound|8000||", mesh.AttrServiceHost: "llama.models.svc.cluster.local",
	})
	if err != nil {
		t.Error(err)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.Process(ctx)
	if err == nil {
		err = st.Send(&extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/v1/chat/completions")}}}}},
			Attributes: map[string]*structpb.Struct{mesh.AttributesKey: attrs}})
	}
	if err == nil {
		_, err = st.Recv()
	}
	if err != nil {
		cancel()
		t.Errorf("open stream: %v", err)
		return nil
	}
	return &heldStream{st: st, cancel: cancel}
}

// finish ends the request (response headers with end_of_stream) and the
// stream, as Envoy does for a bodiless response. A stream the server
// already closed (over the cap) just ends.
func (s *heldStream) finish(t *testing.T) {
	if s == nil {
		return
	}
	defer s.cancel()
	if err := s.st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{EndOfStream: true}}}); err != nil && err != io.EOF {
		t.Errorf("finish: %v", err)
		return
	}
	_ = s.st.CloseSend()
	for {
		if _, err := s.st.Recv(); err != nil {
			return
		}
	}
}

func waitReady(t *testing.T, admin string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) int64 {
	resp, err := (&http.Client{Timeout: time.Minute}).Get(url)
	if err != nil {
		t.Error(err)
		return 0
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("%s: %d", url, resp.StatusCode)
	}
	return n
}

func snapshotAt(t *testing.T, admin string) extproc.Snapshot {
	t.Helper()
	return (&running{admin: admin}).snapshot(t)
}

// countsAt returns the in-flight and untracked counts of one pod.
func countsAt(t *testing.T, admin, pod string) (int64, uint64) {
	t.Helper()
	for _, r := range snapshotAt(t, admin).Targets {
		if r.Pod == pod {
			return r.InFlight, r.Untracked
		}
	}
	return 0, 0
}

// procStatus reads a size field of /proc/PID/status in MiB.
func procStatus(t *testing.T, pid int, field string) float64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb / 1024
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

var built struct {
	once sync.Once
	dir  string
	err  error
	out  []byte
}

// TestMain removes the binary buildBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildBinary builds this package's binary once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "extproc-test-"); built.err != nil {
			return
		}
		built.out, built.err = exec.Command("go", "build", "-o", filepath.Join(built.dir, "extproc"), ".").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return filepath.Join(built.dir, "extproc")
}
