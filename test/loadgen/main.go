// Command loadgen is the ext_proc load benchmark: it builds and starts the
// real extproc binary (cmd/extproc) and the null processor (test/nullproc)
// as separate processes on 127.0.0.1, drives each in turn with the same
// Envoy-like streams from the test/envoy harness, and prints a comparison:
// closed-loop throughput, the server's CPU per request (from
// /proc/PID/stat), reply latency at a fixed open-loop rate (control
// profile), and peak RSS (VmHWM) including a phase with many streams held
// open at once.
//
//	go run ./test/loadgen -duration 20s -concurrency 64
//
// Every phase is bounded in time and request count; all traffic stays on
// loopback. The tool shares the machine's cores with the servers, so the
// end-to-end req/s is a floor: the server CPU per request is the figure to
// compare (shared/TESTBED.md). State is local to run(); no globals.
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
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/inflight-dev/inflight/test/envoy"
)

type options struct {
	duration      time.Duration
	concurrency   int
	profile       string
	version       int
	chunks        int
	rate          int
	latencyFor    time.Duration
	openStreams   int
	deferredClose time.Duration
	jsonOut       bool
	keepBuild     string
	rounds        int
	serverCPU     string
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "closed-loop throughput phase length per server (1s..10m)")
	fs.IntVar(&o.concurrency, "concurrency", 64, "concurrent Envoy-like streams in the throughput phase (1..4096)")
	fs.StringVar(&o.profile, "profile", "control", "processing profile of the throughput phase: control or observe")
	fs.IntVar(&o.version, "envoy", 137, "Envoy lifetime profile: 136 (<=1.36) or 137 (>=1.37)")
	fs.IntVar(&o.chunks, "chunks", 4, "SSE response chunks per request (0..64)")
	fs.IntVar(&o.rate, "rate", 2000, "offered rate of the open-loop latency phase, req/s (1..20000)")
	fs.DurationVar(&o.latencyFor, "latency-duration", 10*time.Second, "latency phase length per server (1s..5m)")
	fs.IntVar(&o.openStreams, "open-streams", 10000, "streams held open at once in the memory phase (0..50000)")
	fs.DurationVar(&o.deferredClose, "deferred-close", 100*time.Millisecond, "deferred_close_timeout in the observe profile")
	fs.IntVar(&o.rounds, "rounds", 3, "alternating rounds (extproc, null, extproc, null, ...); the report gives each server's median (1..9)")
	fs.StringVar(&o.serverCPU, "server-cpu", "", "pin the servers to these CPUs with taskset (e.g. 1); run the load generator itself on the others with 'taskset -c 0'")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON instead of a table")
	fs.StringVar(&o.keepBuild, "bin-dir", "", "build the binaries into this directory and keep them (default: a temporary one)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.duration < time.Second || o.duration > 10*time.Minute:
		return o, fmt.Errorf("-duration %v: want 1s..10m", o.duration)
	case o.concurrency < 1 || o.concurrency > 4096:
		return o, fmt.Errorf("-concurrency %d: want 1..4096", o.concurrency)
	case o.profile != "control" && o.profile != "observe":
		return o, fmt.Errorf("-profile %q: want control or observe", o.profile)
	case o.version != 136 && o.version != 137:
		return o, fmt.Errorf("-envoy %d: want 136 or 137", o.version)
	case o.chunks < 0 || o.chunks > 64:
		return o, fmt.Errorf("-chunks %d: want 0..64", o.chunks)
	case o.rate < 1 || o.rate > 20000:
		return o, fmt.Errorf("-rate %d: want 1..20000", o.rate)
	case o.latencyFor < time.Second || o.latencyFor > 5*time.Minute:
		return o, fmt.Errorf("-latency-duration %v: want 1s..5m", o.latencyFor)
	case o.serverCPU != "" && strings.Trim(o.serverCPU, "0123456789,-") != "":
		return o, fmt.Errorf("-server-cpu %q: want a CPU list such as 1 or 2-3", o.serverCPU)
	case o.rounds < 1 || o.rounds > 9:
		return o, fmt.Errorf("-rounds %d: want 1..9", o.rounds)
	case o.openStreams < 0 || o.openStreams > 50000:
		return o, fmt.Errorf("-open-streams %d: want 0..50000", o.openStreams)
	}
	return o, nil
}

// serverReport is one server's measurements.
type serverReport struct {
	Name string `json:"name"`

	Requests          int64   `json:"requests"`
	ReqPerSec         float64 `json:"req_per_sec"`
	CPUSeconds        float64 `json:"cpu_seconds"`
	CPUSecondsPer1000 float64 `json:"cpu_seconds_per_1000_requests"`
	CPUMicrosPerReq   float64 `json:"cpu_us_per_request"`
	ReqPerCore        float64 `json:"implied_req_per_sec_per_core"`

	OfferedRate      float64 `json:"latency_offered_req_per_sec"`
	LatencyRequests  int     `json:"latency_requests"`
	LatencyReplies   int     `json:"latency_replies"`
	LatencyFailOpen  int     `json:"latency_fail_open"`
	LatencyP50Micros float64 `json:"reply_latency_p50_us"`
	LatencyP99Micros float64 `json:"reply_latency_p99_us"`

	OpenStreams int     `json:"open_streams"`
	RSSOpenMiB  float64 `json:"rss_with_open_streams_mib"`
	PeakRSSMiB  float64 `json:"peak_rss_mib"`
	// PeakRSSThroughputMiB is the peak RSS at the end of the throughput
	// phase (before the latency and memory phases).
	PeakRSSThroughputMiB float64 `json:"peak_rss_after_throughput_mib"`
	ProcessorErrs        int64   `json:"processor_errors"`
	// RoundsCPUMicrosPerReq lists every round's CPU per request.
	RoundsCPUMicrosPerReq []float64 `json:"rounds_cpu_us_per_request"`
}

// medianReport combines one server's rounds: the median of each rate,
// CPU and latency figure, the first round's memory phase, the largest peak
// RSS and the sum of the error counts.
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
	out.CPUSecondsPer1000 = med(func(r *serverReport) float64 { return r.CPUSecondsPer1000 })
	out.CPUMicrosPerReq = med(func(r *serverReport) float64 { return r.CPUMicrosPerReq })
	out.ReqPerCore = med(func(r *serverReport) float64 { return r.ReqPerCore })
	out.LatencyP50Micros = med(func(r *serverReport) float64 { return r.LatencyP50Micros })
	out.LatencyP99Micros = med(func(r *serverReport) float64 { return r.LatencyP99Micros })
	out.OfferedRate = med(func(r *serverReport) float64 { return r.OfferedRate })
	out.RoundsCPUMicrosPerReq = nil
	for _, r := range rs[1:] {
		out.PeakRSSMiB = max(out.PeakRSSMiB, r.PeakRSSMiB)
		out.PeakRSSThroughputMiB = max(out.PeakRSSThroughputMiB, r.PeakRSSThroughputMiB)
		out.ProcessorErrs += r.ProcessorErrs
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
	Profile     string         `json:"profile"`
	Envoy       string         `json:"envoy"`
	Concurrency int            `json:"concurrency"`
	Duration    string         `json:"duration"`
	Chunks      int            `json:"chunks"`
	Servers     []serverReport `json:"servers"`
	CPURatio    float64        `json:"extproc_over_null_cpu_per_request"`
	Checks      []check        `json:"checks"`
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
	rep := report{Machine: machine(), Profile: o.profile, Envoy: fmt.Sprintf("%d", o.version),
		Concurrency: o.concurrency, Duration: o.duration.String(), Chunks: o.chunks}
	servers := []struct {
		name string
		argv func(grpcAddr, adminAddr string) []string
	}{
		{"extproc", func(g, a string) []string {
			return []string{extprocBin, "--grpc-listen", g, "--admin-listen", a, "--replica-name", "loadgen", "--log-level", "error", "--caller-identity", "trust-attributes"}
		}},
		{"null", func(g, _ string) []string { return []string{nullBin, "--listen", g} }},
	}
	// Alternate the servers round by round so that a change in the load of
	// the shared machine hits both alike, and report each one's median.
	rounds := make([][]serverReport, len(servers))
	for r := range o.rounds {
		ro := o
		if r > 0 {
			ro.openStreams = 0 // the memory phase runs once
		}
		for i, s := range servers {
			fmt.Fprintf(os.Stderr, "loadgen: round %d/%d: %s\n", r+1, o.rounds, s.name)
			sr, err := measure(ro, s.name, s.argv)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			rounds[i] = append(rounds[i], sr)
		}
	}
	for _, rs := range rounds {
		rep.Servers = append(rep.Servers, medianReport(rs))
	}
	ext, null := rep.Servers[0], rep.Servers[1]
	if null.CPUMicrosPerReq > 0 {
		rep.CPURatio = ext.CPUMicrosPerReq / null.CPUMicrosPerReq
	}
	rep.Checks = []check{
		{"extproc CPU/request ≤ 1.10 × null", rep.CPURatio, 1.10, rep.CPURatio <= 1.10},
		{"extproc CPU/request ≤ 100 µs", ext.CPUMicrosPerReq, 100, ext.CPUMicrosPerReq <= 100},
		{fmt.Sprintf("extproc p99 reply ≤ 1 ms at %d req/s (control)", o.rate), ext.LatencyP99Micros, 1000, ext.LatencyP99Micros <= 1000},
		{fmt.Sprintf("extproc peak RSS ≤ 200 MiB with %d open streams", o.openStreams), ext.PeakRSSMiB, 200, ext.PeakRSSMiB <= 200},
	}
	if o.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printTable(out, rep)
	return nil
}

func printTable(out io.Writer, rep report) {
	fmt.Fprintf(out, "machine: %s\nprofile: %s, Envoy %s lifetime, %d concurrent streams for %s, %d SSE chunks per request\n\n",
		rep.Machine, rep.Profile, rep.Envoy, rep.Concurrency, rep.Duration, rep.Chunks)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\treq/s\tCPU-s/1000 req\tµs CPU/req\treq/s per core\tp50 reply µs\tp99 reply µs\t(at req/s)\tRSS open streams MiB\tpeak RSS throughput MiB\tpeak RSS MiB\t")
	for _, s := range rep.Servers {
		fmt.Fprintf(tw, "%s\t%.0f\t%.4f\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f (%d)\t%.1f\t%.1f\t\n", s.Name, s.ReqPerSec, s.CPUSecondsPer1000,
			s.CPUMicrosPerReq, s.ReqPerCore, s.LatencyP50Micros, s.LatencyP99Micros, s.OfferedRate, s.RSSOpenMiB, s.OpenStreams, s.PeakRSSThroughputMiB, s.PeakRSSMiB)
	}
	_ = tw.Flush()
	for _, s := range rep.Servers {
		fmt.Fprintf(out, "\n%s µs CPU/request per round: %.1f", s.Name, s.RoundsCPUMicrosPerReq)
	}
	fmt.Fprintf(out, "\n\nextproc/null CPU per request (medians): %.3f\n\n", rep.CPURatio)
	for _, c := range rep.Checks {
		v := "PASS"
		if !c.Pass {
			v = "MISS"
		}
		fmt.Fprintf(out, "%s  %-55s %10.2f (limit %.2f)\n", v, c.Target, c.Value, c.Limit)
	}
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
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func measure(o options, name string, argv func(string, string) []string) (serverReport, error) {
	sr := serverReport{Name: name}
	grpcAddr, err := freeAddr()
	if err != nil {
		return sr, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return sr, err
	}
	a := argv(grpcAddr, adminAddr)
	if o.serverCPU != "" {
		// taskset sets the affinity and execs the server: same pid.
		a = append([]string{"taskset", "-c", o.serverCPU}, a...)
	}
	cmd := exec.Command(a[0], a[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return sr, err
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	if err := waitListening(grpcAddr, 15*time.Second); err != nil {
		return sr, err
	}
	version := envoy.Envoy137
	if o.version == 136 {
		version = envoy.Envoy136
	}
	prof := envoy.Control
	if o.profile == "observe" {
		prof = envoy.Observe
	}
	mk := func(cfg envoy.Config) (*envoy.Client, error) { return envoy.NewClient(cfg, grpcAddr) }

	// Warm-up, then the closed-loop throughput phase.
	c, err := mk(envoy.Config{Version: version, Profile: prof, DeferredCloseTimeout: o.deferredClose})
	if err != nil {
		return sr, err
	}
	closedLoop(c, o, min(2*time.Second, o.duration))
	c.Wait()
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		_ = c.Close()
		return sr, err
	}
	start := time.Now()
	n, errs := closedLoop(c, o, o.duration)
	c.Wait()
	elapsed := time.Since(start)
	cpu1, err := cpuSeconds(pid)
	_ = c.Close()
	if err != nil {
		return sr, err
	}
	sr.Requests, sr.ProcessorErrs = n, errs
	sr.ReqPerSec = float64(n) / elapsed.Seconds()
	sr.CPUSeconds = cpu1 - cpu0
	if n > 0 {
		sr.CPUSecondsPer1000 = sr.CPUSeconds / float64(n) * 1000
		sr.CPUMicrosPerReq = sr.CPUSeconds / float64(n) * 1e6
	}
	if sr.CPUMicrosPerReq > 0 {
		sr.ReqPerCore = 1e6 / sr.CPUMicrosPerReq
	}
	if sr.PeakRSSThroughputMiB, err = procStatusMiB(pid, "VmHWM:"); err != nil {
		return sr, err
	}

	// Open-loop reply latency, control profile.
	lc, err := mk(envoy.Config{Version: version, Profile: envoy.Control})
	if err != nil {
		return sr, err
	}
	lat, reqs, failOpen, offered := openLoop(lc, o)
	_ = lc.Close()
	sr.OfferedRate, sr.LatencyRequests, sr.LatencyReplies, sr.LatencyFailOpen = offered, reqs, len(lat), failOpen
	sr.LatencyP50Micros, sr.LatencyP99Micros = percentile(lat, 0.50), percentile(lat, 0.99)

	// Many streams held open at once.
	if o.openStreams > 0 {
		hc, err := mk(envoy.Config{Version: envoy.Envoy136, Profile: envoy.Control, ConnsPerReplica: 4, MessageTimeout: 30 * time.Second})
		if err != nil {
			return sr, err
		}
		held, rss, err := holdOpen(hc, o.openStreams, pid)
		_ = hc.Close()
		if err != nil {
			return sr, err
		}
		sr.OpenStreams, sr.RSSOpenMiB = held, rss
	}
	if sr.PeakRSSMiB, err = procStatusMiB(pid, "VmHWM:"); err != nil {
		return sr, err
	}
	return sr, nil
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
		Attributes:         envoy.InboundAttributes("models", "llama", "llama-svc", pod, "10.0.0.7", 8000),
		ResponseAttributes: envoy.ResponseAttributesFor("10.0.0.7", 8000, 200),
		Response:           envoy.Response{Headers: []envoy.Header{{Name: "content-type", Value: "text/event-stream"}}, Body: body},
	}
}

func closedLoop(c *envoy.Client, o options, d time.Duration) (n, errs int64) {
	var count, errCount atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Go(func() {
			for time.Now().Before(stop) {
				r := c.Do(context.Background(), request(count.Load(), o.chunks))
				count.Add(1)
				if r.ProcessorErr != nil {
					errCount.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return count.Load(), errCount.Load()
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
			r := c.Do(context.Background(), request(int64(i), o.chunks))
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

func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return float64(s[i].Nanoseconds()) / 1e3
}
