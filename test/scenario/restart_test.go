package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

// proc is one cmd/extproc process on loopback ports.
type proc struct {
	t         *testing.T
	cmd       *exec.Cmd
	grpcAddr  string
	adminAddr string
	exited    chan struct{}
	mu        sync.Mutex
	logs      []map[string]any // the process's JSON log lines
}

// buildExtproc builds cmd/extproc once for the test.
func buildExtproc(t *testing.T) string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "extproc")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/extproc")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/extproc: %v\n%s", err, out)
	}
	return bin
}

// startProc starts the extproc binary and waits until /readyz answers 200.
func startProc(t *testing.T, bin, name string, extra ...string) *proc {
	t.Helper()
	p := &proc{t: t, grpcAddr: testutil.FreeAddr(t), adminAddr: testutil.FreeAddr(t), exited: make(chan struct{})}
	args := append([]string{"--grpc-listen", p.grpcAddr, "--admin-listen", p.adminAddr, "--replica-name", name,
		"--caller-identity", "trust-attributes", "--log-format", "json", "--log-level", "info"}, extra...)
	p.cmd = exec.Command(bin, args...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.readLogs(stderr)
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for !p.ready() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after 30 s; log %v", name, p.logLines())
		}
		after(20 * time.Millisecond)
	}
	return p
}

func (p *proc) readLogs(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			p.mu.Lock()
			p.logs = append(p.logs, m)
			p.mu.Unlock()
		}
	}
	_ = p.cmd.Wait()
	close(p.exited)
}

func (p *proc) logLines() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]map[string]any(nil), p.logs...)
}

// logged returns the first log line whose msg is msg.
func (p *proc) logged(msg string) (map[string]any, bool) {
	for _, l := range p.logLines() {
		if l["msg"] == msg {
			return l, true
		}
	}
	return nil, false
}

func (p *proc) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.adminAddr+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// snapshotTotals reads /v1/snapshot and sums in_flight and started over the
// targets.
func (p *proc) snapshotTotals() (inFlight int64, started uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.adminAddr+"/v1/snapshot", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var snap struct {
		Targets []struct {
			InFlight int64  `json:"in_flight"`
			Started  uint64 `json:"started_total"`
		} `json:"targets"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		return 0, 0, err
	}
	for _, tr := range snap.Targets {
		inFlight += tr.InFlight
		started += tr.Started
	}
	return inFlight, started, nil
}

func (p *proc) sigterm() {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
}

// drainFlags are cmd/extproc's drain settings for the scenario: keep
// serving new streams for serve after SIGTERM (Envoy keeps sending them
// until EDS drops the endpoint), then let open streams finish.
func drainFlags(serve time.Duration) []string {
	return []string{"--drain-delay", serve.String(), "--drain-timeout", "60s"}
}

// TestRollingRestartBinary: a rolling restart of 3 real extproc processes
// (cmd/extproc) under load, as Envoy sees it. For each replica in turn: a
// replacement starts and joins the extproc cluster's endpoints once ready;
// a long request (an LLM generation) is open on the old replica; the old
// replica gets SIGTERM; Envoy keeps sending it new streams until EDS drops
// it a propagation delay later; then its open streams, the long one
// included, run to their end and it exits.
//
// What it proves, per process: no start is lost (no stream is refused or
// fails, so no request goes on fail-open uncounted; each old process
// started exactly the streams sent to it, by its last log line, and each
// replacement by its snapshot), and no count leaks (no stream is cut; every
// request ends by its own end signal; each old process exits with started =
// completed and 0 in flight, the replacements hold 0 in flight at the end).
// Whether the controller scales down meanwhile is the controller's test (a
// vanished replica makes its tick partial).
//
// The same restart with --drain-delay 0 (the listener closed at SIGTERM)
// must lose the streams sent during the propagation delay: the check can
// fail (long tier).
func TestRollingRestartBinary(t *testing.T) {
	bin := buildExtproc(t)
	t.Run("drain-delay", func(t *testing.T) {
		lost := rollingRestart(t, bin, 2*time.Second)
		if lost != 0 {
			t.Errorf("%d requests went on fail-open uncounted during the rolling restart", lost)
		}
	})
	t.Run("no-drain-delay", func(t *testing.T) {
		testutil.SkipUnlessLong(t)
		if lost := rollingRestart(t, bin, 0); lost == 0 {
			t.Error("no request was lost with the listener closed at SIGTERM: the check shows nothing")
		}
	})
}

// rollingRestart runs the scenario with the extprocs' --drain-delay set to
// serveFor and returns the requests lost to fail-open; it checks the rest.
func rollingRestart(t *testing.T, bin string, serveFor time.Duration) (lost int) {
	const (
		propagation = time.Second     // EDS: istiod push + Envoy update (< the drain delay)
		longFor     = 4 * time.Second // the long request on each old replica
		settle      = 300 * time.Millisecond
	)
	old := make([]*proc, 3)
	for i := range old {
		old[i] = startProc(t, bin, fmt.Sprintf("old-%d", i), drainFlags(serveFor)...)
	}
	cfg := envoy.Config{Version: envoy.Envoy137, Profile: envoy.Control, Balancing: envoy.RoundRobin, ConnsPerReplica: 2}
	c, err := envoy.NewClient(cfg, old[0].grpcAddr, old[1].grpcAddr, old[2].grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	stop := make(chan struct{})
	collect := churnLoad(c, 8, stop)
	active := []string{old[0].grpcAddr, old[1].grpcAddr, old[2].grpcAddr}
	var longResults []*envoy.Result
	exitStarted := map[string]uint64{} // per old replica, from its last log line
	var repl []*proc
	after(settle)
	for k := range 3 {
		repl = append(repl, startProc(t, bin, fmt.Sprintf("new-%d", k), drainFlags(serveFor)...))
		active = append(active, repl[k].grpcAddr)
		if err := c.SetEndpoints(active...); err != nil {
			t.Fatal(err)
		}
		// A long request on the old replica, open across its drain.
		lc, err := envoy.NewClient(envoy.Config{Version: envoy.Envoy137, Profile: envoy.Control, CloseStyle: envoy.CloseGraceful}, old[k].grpcAddr)
		if err != nil {
			t.Fatal(err)
		}
		long := request(4)
		long.Response.ChunkDelay = longFor / 4
		longDone := make(chan *envoy.Result, 1)
		go func() { longDone <- lc.Do(context.Background(), long) }()
		after(settle)
		old[k].sigterm()
		after(propagation)
		active = active[1:] // EDS drops the old replica
		if err := c.SetEndpoints(active...); err != nil {
			t.Fatal(err)
		}
		r := <-longDone
		r.Wait()
		_ = lc.Close()
		longResults = append(longResults, r)
		select {
		case <-old[k].exited:
		case <-time.After(30 * time.Second):
			t.Fatalf("old-%d did not exit after its last request", k)
		}
		stopped, ok := old[k].logged("stopped")
		if !ok {
			t.Fatalf("old-%d: no 'stopped' log line; log %v", k, old[k].logLines())
		}
		if n, _ := stopped["in_flight_at_exit"].(float64); n != 0 {
			t.Errorf("old-%d exited with %v requests in flight: they leaked", k, n)
		}
		st, _ := stopped["started"].(float64)
		co, _ := stopped["completed"].(float64)
		if st != co {
			t.Errorf("old-%d at exit: started %v, completed %v", k, st, co)
		}
		exitStarted[old[k].grpcAddr] = uint64(st)
	}
	after(settle)
	close(stop)
	load := collect()
	// opened: streams whose bytes reached a replica; unsure: those of them
	// reset with no reply at all (e.g. Envoy's message timeout on a
	// replica starved of CPU), whose start a correct grpc-go server may
	// never see: the HEADERS, DATA and RST can all be buffered before the
	// handler's first Recv (ENVOY.md §2, README troubleshooting). A
	// replica's started must lie in [opened − unsure, opened].
	opened, unsure := map[string]uint64{}, map[string]uint64{}
	for _, r := range load {
		if r.Stream.Opened && !r.Stream.Lost {
			addr := c.Endpoints()[r.Stream.Replica]
			opened[addr]++
			if r.Stream.Reset && r.Stream.FirstReply.IsZero() {
				unsure[addr]++
			}
		}
	}
	startsOK := func(name, addr string, started, extra uint64) {
		want, slack := opened[addr]+extra, unsure[addr]
		t.Logf("%s: started %d, the harness opened %d streams to it (%d reset unanswered)", name, started, want, slack)
		if started > want || started+slack < want {
			t.Errorf("%s: started %d, the harness opened %d streams to it, %d of them reset unanswered", name, started, want, slack)
		}
	}
	for k, p := range old {
		// +1: the long request, from its own client.
		startsOK(fmt.Sprintf("old-%d", k), p.grpcAddr, exitStarted[p.grpcAddr], 1)
	}
	for k, p := range repl {
		inFlight, started, err := p.snapshotTotals()
		if err != nil {
			t.Fatalf("new-%d: %v", k, err)
		}
		if inFlight != 0 {
			t.Errorf("new-%d: in flight %d after every stream ended", k, inFlight)
		}
		startsOK(fmt.Sprintf("new-%d", k), p.grpcAddr, started, 0)
	}
	results := append(load, longResults...)
	var cut int
	for _, r := range results {
		if r.Uncounted() || r.FailOpen {
			lost++
		}
		if err := r.Stream.ServerStatus; err != nil && status.Code(err) != codes.Canceled {
			cut++
			t.Logf("cut: %+v", r.Stream)
		}
	}
	t.Logf("--drain-delay %v: %d requests across the rolling restart; %d lost starts, %d cut", serveFor, len(results), lost, cut)
	if cut != 0 {
		t.Errorf("%d requests were cut by a stopping replica", cut)
	}
	for _, r := range longResults {
		if r.Outcome != envoy.Completed || r.Stream.EndAck.IsZero() {
			t.Errorf("long request: outcome %v, end ack %v: want completed, its end seen by the server", r.Outcome, r.Stream.EndAck)
		}
	}
	return lost
}
