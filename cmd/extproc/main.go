// Command extproc is inflight's Envoy ext_proc service: Istio's Envoy calls
// it on every ML request and it counts requests in flight per target. See
// package extproc.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "extproc:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	opts := DefaultOptions()
	fs := flag.NewFlagSet("extproc", flag.ContinueOnError)
	opts.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	log, err := opts.Log.New()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	setMemoryLimit(opts, log)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	a, err := newApp(ctx, opts, log)
	if err != nil {
		return err
	}
	return a.serve(ctx)
}

// setMemoryLimit makes the Go heap limit 7/8 of --memory-limit, unless
// GOMEMLIMIT already sets a lower one: a limit at 100 % of the container's
// would leave the garbage collector no room before the OOM kill.
func setMemoryLimit(opts Options, log *zap.Logger) {
	limit, _ := parseMemory(opts.MemoryLimit) // checked by Validate
	budget := memoryBudget(limit)
	if cur := debug.SetMemoryLimit(-1); cur > budget {
		debug.SetMemoryLimit(budget)
		if os.Getenv("GOMEMLIMIT") != "" {
			log.Info("GOMEMLIMIT lowered to 7/8 of --memory-limit", zap.Int64("from", cur), zap.Int64("to", budget))
		}
	}
}

// app is one running extproc: its listeners, servers and tracker.
type app struct {
	opts     Options
	log      *zap.Logger
	tracker  *extproc.Tracker
	metrics  *extproc.Metrics
	gates    *extproc.Gates
	grpc     *grpc.Server
	health   *health.Server
	admin    *extproc.Admin
	http     *http.Server
	ready    atomic.Bool
	draining atomic.Bool

	grpcLis, adminLis net.Listener
	certs             *extproc.CertReloader // mtls mode only
}

// newApp builds the servers and opens the listeners; serve runs them.
func newApp(ctx context.Context, opts Options, log *zap.Logger) (*app, error) {
	a := &app{opts: opts, log: log}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.tracker = extproc.NewTracker(extproc.TrackerOptions{MaxTargets: opts.MaxTargets,
		MaxTargetsPerNamespace: opts.MaxTargetsPerNamespace, IdleTTL: opts.TargetIdleTTL})
	var err error
	if a.metrics, err = extproc.NewMetrics(reg, a.tracker); err != nil {
		return nil, err
	}
	// A zero --release-delay means none (GatesOptions' 0 is the default).
	delay := cmp.Or(opts.ReleaseDelay, -1)
	a.gates = extproc.NewGates(extproc.GatesOptions{ReleaseDelay: delay, MaxHeld: min(opts.MaxHeld, opts.MaxOpenStreams), Metrics: a.metrics, Log: log})
	srvOpts := extproc.ServerOptions{Metrics: a.metrics, Log: log, MaxOpenStreams: opts.MaxOpenStreams,
		Gates: a.gates, RetryAfter: opts.RetryAfter}
	gopts := grpcLimits(opts)
	switch opts.CallerIdentity {
	case identityXFCC:
		own, _ := mesh.ParseSPIFFE(opts.XFCCBy) // checked by Validate
		srvOpts.Authenticator = extproc.XFCCAuthenticator{By: opts.XFCCBy}
		srvOpts.Policy = mesh.NewCallerPolicy(own.TrustDomain, opts.GatewayIdentities)
	case identityMTLS:
		if a.certs, err = waitForCerts(ctx, opts, log); err != nil {
			return nil, err
		}
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(a.certs.ServerConfig())))
		srvOpts.Authenticator = extproc.PeerCertAuthenticator{}
		srvOpts.Policy = mesh.NewCallerPolicy(a.certs.Identity().TrustDomain, opts.GatewayIdentities)
	case identityTrustAttributes:
		log.Warn("--caller-identity=trust-attributes: request attributes are believed without any caller identity (development only)")
	}

	a.grpc = grpc.NewServer(gopts...)
	extprocv3.RegisterExternalProcessorServer(a.grpc, extproc.NewServer(a.tracker, srvOpts))
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpc, a.health)
	a.admin = &extproc.Admin{Tracker: a.tracker, Replica: opts.ReplicaName, BootID: extproc.NewBootID(), Gatherer: reg, Ready: &a.ready, Draining: &a.draining,
		Gates: a.gates}
	a.http = &http.Server{
		Handler: a.admin.Handler(),
		// A slow or stuck reader is cut, so it cannot hold a snapshot or a
		// scrape (every target's data) for long (README, Security → Limits).
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	a.http.RegisterOnShutdown(a.gates.EndWakeWaits) // a controller's long wait must not delay the exit

	lis, err := net.Listen("tcp", opts.GRPCListen)
	if err != nil {
		return nil, fmt.Errorf("--grpc-listen: %w", err)
	}
	a.grpcLis = newLimitListener(lis, opts.MaxConnections, reg)
	if a.adminLis, err = net.Listen("tcp", opts.AdminListen); err != nil {
		a.grpcLis.Close()
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	return a, nil
}

// grpcLimits are the gRPC server's explicit bounds (README, Security →
// Limits).
func grpcLimits(opts Options) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(uint32(opts.MaxStreamsPerConnection)),
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxHeaderListSize(64 << 10),
		// Fixed windows (no BDP growth): a stream buffers at most 64 KiB its
		// handler has not read, a connection 1 MiB.
		grpc.InitialWindowSize(64 << 10),
		grpc.InitialConnWindowSize(1 << 20),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			// Detect dead Envoy connections so their streams end (and their
			// requests are released) instead of lingering.
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
			// Idle connections are closed; connections are renewed after
			// MaxConnectionAge by GOAWAY: Envoy opens a new one for new
			// streams while the open ones run to their end. No
			// MaxConnectionAgeGrace (grpc-go's default is infinity): an LLM
			// request running for many minutes is never cut.
			MaxConnectionIdle: opts.MaxConnectionIdle,
			MaxConnectionAge:  opts.MaxConnectionAge,
		}),
		// Pings more often than every 5 s get the connection closed (a
		// ping flood); Envoy and grpc-go clients ping far less often.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
}

// waitForCerts loads istio-agent's files, waiting up to a minute for them
// to appear (the agent starts beside this container and writes them once it
// has its certificate).
func waitForCerts(ctx context.Context, opts Options, log *zap.Logger) (*extproc.CertReloader, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := extproc.NewCertReloader(opts.TLSCertChain, opts.TLSKey, opts.TLSRootCert)
		if err == nil {
			log.Info("mTLS files loaded", zap.Stringer("identity", r.Identity()), zap.Time("not_after", r.NotAfter()))
			return r, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("--caller-identity=mtls: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// serve runs until ctx ends (SIGTERM), then drains.
func (a *app) serve(ctx context.Context) error {
	opts, log := a.opts, a.log
	if a.certs != nil {
		go a.certs.Run(ctx, opts.TLSReloadInterval, log)
	}
	go a.sweep(ctx)
	errc := make(chan error, 2)
	go func() { errc <- a.grpc.Serve(a.grpcLis) }()
	go func() { errc <- a.http.Serve(a.adminLis) }()
	a.ready.Store(true)
	log.Info("serving",
		zap.String("grpc", a.grpcLis.Addr().String()), zap.String("admin", a.adminLis.Addr().String()),
		zap.String("replica", opts.ReplicaName), zap.String("boot_id", a.admin.BootID),
		zap.String("caller_identity", opts.CallerIdentity))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	a.drain(serveErr == nil)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.http.Shutdown(sctx)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}

// drain stops serving without losing a count (README, Security → Drain).
// On SIGTERM /readyz fails at once and snapshots say draining, but new
// streams are still accepted for --drain-delay, while the endpoint's
// removal reaches every Envoy (EndpointSlice, istiod's push, Envoy's
// update). Then GOAWAY: no new streams, and the open ones may finish for
// --drain-timeout; those still open after it are cut, and each releases its
// request once (Process's deferred end). The admin port keeps serving
// snapshots until the end. delay is false when a server failed: then there
// is nothing to wait for.
func (a *app) drain(delay bool) {
	opts, log := a.opts, a.log
	a.ready.Store(false)
	a.draining.Store(true)
	a.health.Shutdown()
	if delay && opts.DrainDelay > 0 {
		log.Info("draining: not ready; new streams still accepted while the endpoint's removal propagates",
			zap.Duration("delay", opts.DrainDelay), zap.Duration("then_timeout", opts.DrainTimeout))
		time.Sleep(opts.DrainDelay)
	}
	log.Info("draining: GOAWAY; open streams may finish", zap.Int64("open_streams", a.metrics.OpenStreams()),
		zap.Duration("timeout", opts.DrainTimeout))
	done := make(chan struct{})
	go func() { a.grpc.GracefulStop(); close(done) }()
	t := time.NewTimer(opts.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("drain timeout passed; releasing the held requests and cutting the open streams (each releases its request)",
			zap.Int64("open_streams", a.metrics.OpenStreams()), zap.Int64("held", a.gates.Held()))
		// Held requests are released (CONTINUE) before the cut; one whose
		// stream is cut before its CONTINUE is written fails open, which
		// is the same for the request.
		a.gates.Close()
		a.grpc.Stop()
		<-done
	}
	var inFlight int64
	var started, completed uint64
	for _, r := range a.tracker.Records() {
		inFlight += r.InFlight
		started += r.Started
		completed += r.Completed
	}
	log.Info("stopped", zap.Int64("in_flight_at_exit", inFlight), zap.Uint64("started", started), zap.Uint64("completed", completed))
}

// sweep evicts idle targets every fifth of --target-idle-ttl until ctx ends.
func (a *app) sweep(ctx context.Context) {
	t := time.NewTicker(a.opts.TargetIdleTTL / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.metrics.Evicted(a.tracker.Sweep())
		}
	}
}
