// Command loadgen is the ext_proc load benchmark: it builds and starts the
// real extproc binary (cmd/extproc) and the null processor (test/nullproc)
// as separate processes on 127.0.0.1 and drives each in turn with the same
// Envoy-like streams from the test/envoy harness, on the processing modes
// the install renders (istio.ExternalProcessor) for each profile. It sweeps
// the response length (SSE chunks per request: 1, 50, 200, 1,000 by
// default) and reports, per cell, the server's CPU per request (from
// /proc/PID/stat) for both servers and their ratio, then reply latency at a
// fixed open-loop rate (control profile) and peak RSS (VmHWM) with many
// streams held open at once. -modes streamed adds the previous install's
// STREAMED response body, for comparison in the same run.
//
//	go run ./test/loadgen                      # what make bench runs
//	go run ./test/loadgen -modes shipped,streamed -profiles control -chunks 1,200
//
// Every phase is bounded in time and request count; all traffic stays on
// loopback. The tool shares the machine's cores with the servers, so the
// end-to-end req/s is a floor: the server CPU per request is the figure to
// compare (shared/TESTBED.md), and the load average before and after is
// printed with it. State is local to run(); no globals.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

type options struct {
	duration    time.Duration
	concurrency int
	profiles    []string
	modes       []string
	chunks      []int
	version     int
	rate        int
	latencyFor  time.Duration
	openStreams int
	jsonOut     bool
	keepBuild   string
	rounds      int
	serverCPU   string
	// edge runs the edge phases (issue 12) instead of the sweep: CPU per
	// request of not-held edge requests with a gate table in force vs
	// without, and RSS with held requests.
	edge bool
	held int
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// Modes of the throughput sweep: the filter the install renders, or the
// previous install's STREAMED response body (one message per chunk, for
// comparison in the same run).
const (
	modeShipped  = "shipped"
	modeStreamed = "streamed"
)

func parse(args []string) (options, error) {
	var o options
	var profiles, modes, chunks string
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "closed-loop throughput phase length per server and cell (1s..10m)")
	fs.IntVar(&o.concurrency, "concurrency", 64, "concurrent Envoy-like streams in the throughput phase (1..4096)")
	fs.StringVar(&profiles, "profiles", "observe,control", "install profiles of the throughput sweep: observe and/or control")
	fs.StringVar(&modes, "modes", modeShipped, "processing modes of the sweep: shipped (what istio/ renders) and/or streamed (response body STREAMED, the previous install)")
	fs.StringVar(&chunks, "chunks", "1,50,200,1000", "SSE response chunks per request, one sweep cell each (0..1000)")
	fs.IntVar(&o.version, "envoy", 137, "Envoy lifetime profile: 136 (<=1.36) or 137 (>=1.37)")
	fs.IntVar(&o.rate, "rate", 2000, "offered rate of the open-loop latency phase, req/s (1..20000)")
	fs.DurationVar(&o.latencyFor, "latency-duration", 10*time.Second, "latency phase length per server (0 skips it, else 1s..5m)")
	fs.IntVar(&o.openStreams, "open-streams", 10000, "streams held open at once in the memory phase (0..50000)")
	fs.IntVar(&o.rounds, "rounds", 3, "alternating rounds per cell (extproc, null, extproc, null, ...); the report gives each server's median (1..9)")
	fs.StringVar(&o.serverCPU, "server-cpu", "", "pin the servers to these CPUs with taskset (e.g. 1); run the load generator itself on the others with 'taskset -c 0'")
	fs.BoolVar(&o.edge, "edge", false, "run the edge phases instead of the sweep: CPU per request of gateway requests that are not held, with a gate table in force vs none (today's control path), alternating rounds; then -held requests held at once and the extproc's RSS")
	fs.IntVar(&o.held, "held", 10000, "-edge: requests held at once in the memory phase (0 skips it; 1..50000)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON instead of a table")
	fs.StringVar(&o.keepBuild, "bin-dir", "", "build the binaries into this directory and keep them (default: a temporary one)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	for _, p := range strings.Split(profiles, ",") {
		if p != "observe" && p != "control" {
			errs = append(errs, fmt.Errorf("-profiles %q: %q is not observe or control", profiles, p))
		}
		o.profiles = append(o.profiles, p)
	}
	for _, m := range strings.Split(modes, ",") {
		if m != modeShipped && m != modeStreamed {
			errs = append(errs, fmt.Errorf("-modes %q: %q is not shipped or streamed", modes, m))
		}
		o.modes = append(o.modes, m)
	}
	for _, c := range strings.Split(chunks, ",") {
		n, err := strconv.Atoi(c)
		if err != nil || n < 0 || n > 1000 {
			errs = append(errs, fmt.Errorf("-chunks %q: %q is not a number from 0 to 1000", chunks, c))
		}
		o.chunks = append(o.chunks, n)
	}
	switch {
	case o.duration < time.Second || o.duration > 10*time.Minute:
		errs = append(errs, fmt.Errorf("-duration %v: want 1s..10m", o.duration))
	case o.concurrency < 1 || o.concurrency > 4096:
		errs = append(errs, fmt.Errorf("-concurrency %d: want 1..4096", o.concurrency))
	case o.version != 136 && o.version != 137:
		errs = append(errs, fmt.Errorf("-envoy %d: want 136 or 137", o.version))
	case o.rate < 1 || o.rate > 20000:
		errs = append(errs, fmt.Errorf("-rate %d: want 1..20000", o.rate))
	case o.latencyFor != 0 && (o.latencyFor < time.Second || o.latencyFor > 5*time.Minute):
		errs = append(errs, fmt.Errorf("-latency-duration %v: want 0 or 1s..5m", o.latencyFor))
	case o.serverCPU != "" && strings.Trim(o.serverCPU, "0123456789,-") != "":
		errs = append(errs, fmt.Errorf("-server-cpu %q: want a CPU list such as 1 or 2-3", o.serverCPU))
	case o.rounds < 1 || o.rounds > 9:
		errs = append(errs, fmt.Errorf("-rounds %d: want 1..9", o.rounds))
	case o.held < 0 || o.held > 50000:
		errs = append(errs, fmt.Errorf("-held %d: want 0..50000", o.held))
	case o.openStreams < 0 || o.openStreams > 50000:
		errs = append(errs, fmt.Errorf("-open-streams %d: want 0..50000", o.openStreams))
	}
	return o, errors.Join(errs...)
}

// serverReport is one server's throughput measurements in one sweep cell.
type serverReport struct {
	Name string `json:"name"`

	Requests        int64   `json:"requests"`
	ReqPerSec       float64 `json:"req_per_sec"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUMicrosPerReq float64 `json:"cpu_us_per_request"`
	MessagesPerReq  float64 `json:"messages_per_request"`
	ProcessorErrs   int64   `json:"processor_errors"`
	// RoundsCPUMicrosPerReq lists every round's CPU per request.
	RoundsCPUMicrosPerReq []float64 `json:"rounds_cpu_us_per_request"`
}

// extrasReport are the phases run once per server: reply latency at a fixed
// open-loop rate (control) and memory with many streams held open.
type extrasReport struct {
	Name             string  `json:"name"`
	OfferedRate      float64 `json:"latency_offered_req_per_sec"`
	LatencyRequests  int     `json:"latency_requests"`
	LatencyReplies   int     `json:"latency_replies"`
	LatencyFailOpen  int     `json:"latency_fail_open"`
	LatencyP50Micros float64 `json:"reply_latency_p50_us"`
	LatencyP99Micros float64 `json:"reply_latency_p99_us"`
	OpenStreams      int     `json:"open_streams"`
	RSSOpenMiB       float64 `json:"rss_with_open_streams_mib"`
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
}

// cell is one point of the sweep: profile × mode × response chunks, both
// servers measured in alternating rounds.
type cell struct {
	Profile string         `json:"profile"`
	Mode    string         `json:"mode"`
	Chunks  int            `json:"chunks"`
	Servers []serverReport `json:"servers"`
	// CPURatio is extproc/null CPU per request (medians).
	CPURatio float64 `json:"extproc_over_null_cpu_per_request"`
}

// medianReport combines one server's rounds: the median of each rate and
// CPU figure and the sum of the error counts.
func medianReport(rs []serverReport) serverReport {
	out := rs[0]
	med := func(f func(*serverReport) float64) float64 {
		v := make([]float64, len(rs))
		for i := range rs {
			v[i] = f(&rs[i])
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	out.ReqPerSec = med(func(r *serverReport) float64 { return r.ReqPerSec })
	out.CPUMicrosPerReq = med(func(r *serverReport) float64 { return r.CPUMicrosPerReq })
	out.MessagesPerReq = med(func(r *serverReport) float64 { return r.MessagesPerReq })
	out.RoundsCPUMicrosPerReq = nil
	for _, r := range rs[1:] {
		out.ProcessorErrs += r.ProcessorErrs
		out.Requests += r.Requests
		out.CPUSeconds += r.CPUSeconds
	}
	for _, r := range rs {
		out.RoundsCPUMicrosPerReq = append(out.RoundsCPUMicrosPerReq, r.CPUMicrosPerReq)
	}
	return out
}

type check struct {
	Target string  `json:"target"`
	Value  float64 `json:"value"`
	Limit  float64 `json:"limit"`
	Pass   bool    `json:"pass"`
}

type report struct {
	Machine     string         `json:"machine"`
	LoadBefore  string         `json:"load_before"`
	LoadAfter   string         `json:"load_after"`
	Envoy       string         `json:"envoy"`
	Concurrency int            `json:"concurrency"`
	Duration    string         `json:"duration"`
	Cells       []cell         `json:"cells"`
	Extras      []extrasReport `json:"extras"`
	Checks      []check        `json:"checks"`
}

// server is one process under test.
type server struct {
	name string
	argv func(grpcAddr, adminAddr string) []string
	// setup, if set, runs once the server listens (e.g. PUT /v1/gates).
	setup func(adminAddr string) error
}

func run(args []string, out io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	binDir := o.keepBuild
	if binDir == "" {
		d, err := os.MkdirTemp("", "inflight-loadgen-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		binDir = d
	}
	extprocBin, nullBin := filepath.Join(binDir, "extproc"), filepath.Join(binDir, "nullproc")
	for pkg, bin := range map[string]string{"./cmd/extproc": extprocBin, "./test/nullproc": nullBin} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s (run from the module root): %w", pkg, err)
		}
	}
	if o.edge {
		return runEdge(o, extprocBin, out)
	}
	rep := report{Machine: machine(), LoadBefore: loadavg(), Envoy: fmt.Sprintf("%d", o.version),
		Concurrency: o.concurrency, Duration: o.duration.String()}
	servers := []server{
		{name: "extproc", argv: func(g, a string) []string {
			return []string{extprocBin, "--grpc-listen", g, "--admin-listen", a, "--replica-name", "loadgen", "--log-level", "error", "--caller-identity", "trust-attributes"}
		}},
		{name: "null", argv: func(g, _ string) []string { return []string{nullBin, "--listen", g} }},
	}
	version := envoy.Envoy137
	if o.version == 136 {
		version = envoy.Envoy136
	}
	// The sweep. Within a cell the servers alternate round by round, so that
	// a change in the load of the shared machine hits both alike; each
	// server's median is reported.
	for _, mode := range o.modes {
		for _, prof := range o.profiles {
			for _, chunks := range o.chunks {
				c := cell{Profile: prof, Mode: mode, Chunks: chunks}
				cfg, err := sweepConfig(prof, mode, version)
				if err != nil {
					return err
				}
				rounds := make([][]serverReport, len(servers))
				for r := range o.rounds {
					for i, s := range servers {
						fmt.Fprintf(os.Stderr, "loadgen: %s %s, %d chunks, round %d/%d: %s\n", mode, prof, chunks, r+1, o.rounds, s.name)
						sr, err := measureThroughput(o, cfg, chunks, s)
						if err != nil {
							return fmt.Errorf("%s: %w", s.name, err)
						}
						rounds[i] = append(rounds[i], sr)
					}
				}
				for _, rs := range rounds {
					c.Servers = append(c.Servers, medianReport(rs))
				}
				if null := c.Servers[1].CPUMicrosPerReq; null > 0 {
					c.CPURatio = c.Servers[0].CPUMicrosPerReq / null
				}
				rep.Cells = append(rep.Cells, c)
			}
		}
	}
	if o.latencyFor > 0 || o.openStreams > 0 {
		for _, s := range servers {
			fmt.Fprintf(os.Stderr, "loadgen: latency and memory phases: %s\n", s.name)
			ex, err := measureExtras(o, version, s)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			rep.Extras = append(rep.Extras, ex)
		}
	}
	rep.LoadAfter = loadavg()
	rep.Checks = checks(o, rep)
	if o.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printTable(out, o, rep)
	return nil
}

// sweepConfig is the harness configuration of a sweep cell: the install's
// rendered filter, or the same with a STREAMED response body.
func sweepConfig(prof, mode string, v envoy.Version) (envoy.Config, error) {
	p := envoy.Observe
	if prof == "control" {
		p = envoy.Control
	}
	cfg := envoy.Config{Version: v, Profile: p}
	if mode == modeStreamed {
		ep, err := envoy.Shipped(p, v)
		if err != nil {
			return cfg, err
		}
		ep.ProcessingMode.ResponseBodyMode = filterv3.ProcessingMode_STREAMED
		cfg.Filter = ep
	}
	return cfg, nil
}

// checks are the targets the report states: extproc within 10 % of the null
// processor, ≤ 100 µs per request, and (shipped modes) a cost per request
// that does not grow with the response's length.
func checks(o options, rep report) []check {
	var out []check
	for _, c := range rep.Cells {
		if c.Mode != modeShipped {
			continue
		}
		out = append(out, check{fmt.Sprintf("%s, %d chunks: extproc CPU/request ≤ 1.10 × null", c.Profile, c.Chunks), c.CPURatio, 1.10, c.CPURatio <= 1.10})
	}
	for _, prof := range o.profiles {
		var first, last *cell
		for i := range rep.Cells {
			c := &rep.Cells[i]
			if c.Mode != modeShipped || c.Profile != prof {
				continue
			}
			if first == nil || c.Chunks < first.Chunks {
				first = c
			}
			if last == nil || c.Chunks > last.Chunks {
				last = c
			}
		}
		if first == nil || last == first || first.Servers[0].CPUMicrosPerReq == 0 {
			continue
		}
		g := last.Servers[0].CPUMicrosPerReq / first.Servers[0].CPUMicrosPerReq
		out = append(out, check{fmt.Sprintf("%s: extproc CPU/request at %d chunks ≤ 1.25 × at %d", prof, last.Chunks, first.Chunks), g, 1.25, g <= 1.25})
	}
	for _, ex := range rep.Extras {
		if ex.Name != "extproc" {
			continue
		}
		if o.latencyFor > 0 {
			out = append(out, check{fmt.Sprintf("extproc p99 reply ≤ 1 ms at %d req/s (control)", o.rate), ex.LatencyP99Micros, 1000, ex.LatencyP99Micros <= 1000})
		}
		if o.openStreams > 0 {
			out = append(out, check{fmt.Sprintf("extproc peak RSS ≤ 200 MiB with %d open streams", o.openStreams), ex.PeakRSSMiB, 200, ex.PeakRSSMiB <= 200})
		}
	}
	return out
}

func printTable(out io.Writer, o options, rep report) {
	fmt.Fprintf(out, "machine: %s\nload average before: %s, after: %s\nEnvoy %s lifetime, %d concurrent streams for %s per server, cell and round, %d rounds (medians)\n\n",
		rep.Machine, rep.LoadBefore, rep.LoadAfter, rep.Envoy, rep.Concurrency, rep.Duration, o.rounds)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tprofile\tchunks\tmessages/req\textproc µs CPU/req\tnull µs CPU/req\tratio\textproc req/s\textproc rounds µs\t")
	for _, c := range rep.Cells {
		e, n := c.Servers[0], c.Servers[1]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.0f\t%.1f\t\n", c.Mode, c.Profile, c.Chunks, e.MessagesPerReq,
			e.CPUMicrosPerReq, n.CPUMicrosPerReq, c.CPURatio, e.ReqPerSec, e.RoundsCPUMicrosPerReq)
	}
	_ = tw.Flush()
	if len(rep.Extras) > 0 {
		fmt.Fprintln(out)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "server\tp50 reply µs\tp99 reply µs\t(at req/s, control)\tRSS open streams MiB\tpeak RSS MiB\t")
		for _, ex := range rep.Extras {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.1f (%d)\t%.1f\t\n", ex.Name, ex.LatencyP50Micros, ex.LatencyP99Micros, ex.OfferedRate, ex.RSSOpenMiB, ex.OpenStreams, ex.PeakRSSMiB)
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(out)
	for _, c := range rep.Checks {
		v := "PASS"
		if !c.Pass {
			v = "MISS"
		}
		fmt.Fprintf(out, "%s  %-60s %10.2f (limit %.2f)\n", v, c.Target, c.Value, c.Limit)
	}
}

// loadavg is /proc/loadavg's first three fields (the machine is shared).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if _, v, ok := strings.Cut(l, ":"); ok {
					model = strings.TrimSpace(v)
				}
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// freeAddr returns a free loopback port's address.

// startServer starts s on free loopback ports and returns its process
// and gRPC address; stop kills it (its state is of no interest afterwards,
// and a graceful drain would only lengthen the run).
func startServer(o options, s server) (cmd *exec.Cmd, grpcAddr string, stop func(), err error) {
	grpcAddr, err = testutil.FreeLoopbackAddr()
	if err != nil {
		return nil, "", nil, err
	}
	adminAddr, err := testutil.FreeLoopbackAddr()
	if err != nil {
		return nil, "", nil, err
	}
	a := s.argv(grpcAddr, adminAddr)
	if o.serverCPU != "" {
		// taskset sets the affinity and execs the server: same pid.
		a = append([]string{"taskset", "-c", o.serverCPU}, a...)
	}
	cmd = exec.Command(a[0], a[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", nil, err
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if err := waitListening(grpcAddr, 15*time.Second); err != nil {
		stop()
		return nil, "", nil, err
	}
	if s.setup != nil {
		if err := waitListening(adminAddr, 15*time.Second); err != nil {
			stop()
			return nil, "", nil, err
		}
		if err := s.setup(adminAddr); err != nil {
			stop()
			return nil, "", nil, err
		}
	}
	return cmd, grpcAddr, stop, nil
}

// measureThroughput runs one server for one sweep cell: a warm-up, then the
// closed-loop phase, with the server's CPU time read from /proc before and
// after.
func measureThroughput(o options, cfg envoy.Config, chunks int, s server) (serverReport, error) {
	sr := serverReport{Name: s.name}
	cmd, addr, stop, err := startServer(o, s)
	if err != nil {
		return sr, err
	}
	defer stop()
	pid := cmd.Process.Pid
	c, err := envoy.NewClient(cfg, addr)
	if err != nil {
		return sr, err
	}
	defer c.Close()
	closedLoop(c, o, chunks, min(2*time.Second, o.duration))
	c.Wait()
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return sr, err
	}
	start := time.Now()
	n, errs, msgs := closedLoop(c, o, chunks, o.duration)
	c.Wait()
	elapsed := time.Since(start)
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		return sr, err
	}
	sr.Requests, sr.ProcessorErrs = n, errs
	sr.ReqPerSec = float64(n) / elapsed.Seconds()
	sr.CPUSeconds = cpu1 - cpu0
	if n > 0 {
		sr.CPUMicrosPerReq = sr.CPUSeconds / float64(n) * 1e6
		sr.MessagesPerReq = float64(msgs) / float64(n)
	}
	return sr, nil
}

// measureExtras runs the once-per-server phases: reply latency at a fixed
// open-loop rate (shipped control filter, 4 chunks), then many streams held
// open, then the peak RSS.
func measureExtras(o options, v envoy.Version, s server) (extrasReport, error) {
	ex := extrasReport{Name: s.name}
	cmd, addr, stop, err := startServer(o, s)
	if err != nil {
		return ex, err
	}
	defer stop()
	pid := cmd.Process.Pid
	if o.latencyFor > 0 {
		lc, err := envoy.NewClient(envoy.Config{Version: v, Profile: envoy.Control}, addr)
		if err != nil {
			return ex, err
		}
		lat, reqs, failOpen, offered := openLoop(lc, o)
		_ = lc.Close()
		ex.OfferedRate, ex.LatencyRequests, ex.LatencyReplies, ex.LatencyFailOpen = offered, reqs, len(lat), failOpen
		ex.LatencyP50Micros, ex.LatencyP99Micros = latencyMicros(lat, 0.50), latencyMicros(lat, 0.99)
	}
	if o.openStreams > 0 {
		// The servers allow 1,000 streams per connection (HTTP/2
		// SETTINGS_MAX_CONCURRENT_STREAMS); Envoy opens more connections
		// beyond it, the harness has them ready.
		conns := (o.openStreams+999)/1000 + 1
		hc, err := envoy.NewClient(envoy.Config{Version: envoy.Envoy136, Profile: envoy.Control, ConnsPerReplica: conns, MessageTimeout: 30 * time.Second}, addr)
		if err != nil {
			return ex, err
		}
		held, rss, err := holdOpen(hc, o.openStreams, pid)
		_ = hc.Close()
		if err != nil {
			return ex, err
		}
		ex.OpenStreams, ex.RSSOpenMiB = held, rss
	}
	if ex.PeakRSSMiB, err = procStatusMiB(pid, "VmHWM:"); err != nil {
		return ex, err
	}
	return ex, nil
}

func waitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server on %s not listening after %v: %w", addr, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// request is the benchmark's request: an inbound-sidecar SSE request to
// one of 8 pods.
func request(i int64, chunks int) *envoy.Request {
	pod := fmt.Sprintf("llama-%d", i%8)
	body := make([][]byte, chunks)
	for k := range body {
		body[k] = []byte(`data: {"choices":[{"delta":{"content":"token"}}]}` + "\n\n")
	}
	return &envoy.Request{
		Attributes: envoy.InboundAttributes("models", "llama", "llama-svc", pod, "10.0.0.7", 8000),
		Response:   envoy.Response{Headers: []envoy.Header{{Name: "content-type", Value: "text/event-stream"}}, Body: body},
	}
}

func closedLoop(c *envoy.Client, o options, chunks int, d time.Duration) (n, errs, msgs int64) {
	var count, errCount, msgCount atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Go(func() {
			for time.Now().Before(stop) {
				req := request(count.Load(), chunks)
				if o.edge {
					req.Attributes = envoy.GatewayAttributes("models", edgeService, 8000)
				}
				r := c.Do(context.Background(), req)
				count.Add(1)
				msgCount.Add(int64(len(r.Sent)))
				if r.ProcessorErr != nil {
					errCount.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return count.Load(), errCount.Load(), msgCount.Load()
}

// openLoop offers o.rate req/s for o.latencyFor regardless of completions
// (bounded outstanding) and returns every awaited reply's latency.
func openLoop(c *envoy.Client, o options) (lat []time.Duration, reqs, failOpen int, offered float64) {
	total := int(float64(o.rate) * o.latencyFor.Seconds())
	var mu sync.Mutex
	var wg sync.WaitGroup
	var outstanding atomic.Int64
	interval := time.Second / time.Duration(o.rate)
	start := time.Now()
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		if outstanding.Load() > 10000 {
			continue // the server is not keeping up: offered load is shed
		}
		outstanding.Add(1)
		reqs++
		wg.Go(func() {
			defer outstanding.Add(-1)
			r := c.Do(context.Background(), request(int64(i), 4))
			mu.Lock()
			for _, rp := range r.Replies {
				lat = append(lat, rp.Latency)
			}
			if r.FailOpen {
				failOpen++
			}
			mu.Unlock()
		})
	}
	offered = float64(reqs) / time.Since(start).Seconds()
	wg.Wait()
	c.Wait()
	return lat, reqs, failOpen, offered
}

// holdOpen opens n streams (control, Envoy ≤ 1.36: each stays open until
// its HTTP request ends), holds them all open, reads the server's RSS, and
// releases them.
func holdOpen(c *envoy.Client, n, pid int) (held int, rssMiB float64, err error) {
	var reached atomic.Int64
	all := make(chan struct{})
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		req := request(int64(i), 1)
		req.OnResponseChunk = func(int, *envoy.Result) {
			if reached.Add(1) == int64(n) {
				close(all)
			}
			<-release
		}
		wg.Go(func() { c.Do(context.Background(), req) })
	}
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
	}
	held = int(reached.Load())
	time.Sleep(500 * time.Millisecond) // let the server settle before reading RSS
	rssMiB, err = procStatusMiB(pid, "VmRSS:")
	close(release)
	wg.Wait()
	c.Wait()
	if err == nil && held < n {
		err = fmt.Errorf("only %d of %d streams opened within 2 minutes", held, n)
	}
	return held, rssMiB, err
}

// cpuSeconds is utime+stime of pid from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: split after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on Linux for every supported architecture.
const clockTicks = 100

func procStatusMiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// latencyMicros is the q-quantile of d in microseconds (sim.Quantile, the
// project's one quantile); 0 when d is empty.
func latencyMicros(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	us := make([]float64, len(d))
	for i, x := range d {
		us[i] = float64(x.Nanoseconds()) / 1e3
	}
	slices.Sort(us)
	return sim.Quantile(us, q)
}
