// Command extproc is inflight's Envoy ext_proc service: Istio's Envoy calls
// it on every ML request and it counts requests in flight per target. See
// package extproc.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
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

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	a, err := newApp(ctx, opts, log)
	if err != nil {
		return err
	}
	return a.serve(ctx)
}

// app is one running extproc: its listeners, servers and tracker.
type app struct {
	opts    Options
	log     *zap.Logger
	tracker *extproc.Tracker
	grpc    *grpc.Server
	health  *health.Server
	admin   *extproc.Admin
	http    *http.Server
	ready   atomic.Bool

	grpcLis, adminLis net.Listener
	certs             *extproc.CertReloader // mtls mode only
}

// newApp builds the servers and opens the listeners; serve runs them.
func newApp(ctx context.Context, opts Options, log *zap.Logger) (*app, error) {
	a := &app{opts: opts, log: log}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.tracker = extproc.NewTracker(extproc.TrackerOptions{MaxTargets: opts.MaxTargets})
	metrics, err := extproc.NewMetrics(reg, a.tracker)
	if err != nil {
		return nil, err
	}
	srvOpts := extproc.ServerOptions{Metrics: metrics, Log: log}
	gopts := []grpc.ServerOption{
		// Detect dead Envoy connections so their streams end (and their
		// requests are released) instead of lingering.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
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
	a.admin = &extproc.Admin{Tracker: a.tracker, Replica: opts.ReplicaName, BootID: extproc.NewBootID(), Gatherer: reg, Ready: &a.ready}
	a.http = &http.Server{Handler: a.admin.Handler(), ReadHeaderTimeout: 5 * time.Second}

	if a.grpcLis, err = net.Listen("tcp", opts.GRPCListen); err != nil {
		return nil, fmt.Errorf("--grpc-listen: %w", err)
	}
	if a.adminLis, err = net.Listen("tcp", opts.AdminListen); err != nil {
		a.grpcLis.Close()
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	return a, nil
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

	// Drain: report not ready first so Envoy and Kubernetes stop sending
	// new streams, let open streams finish up to the deadline, then cut the
	// rest. Every cut stream still ends its request (Process's defer).
	log.Info("draining", zap.Duration("deadline", opts.DrainTimeout))
	a.ready.Store(false)
	a.health.Shutdown()
	done := make(chan struct{})
	go func() { a.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(opts.DrainTimeout):
		log.Warn("drain deadline passed; closing open streams")
		a.grpc.Stop()
		<-done
	}
	var leaked int64
	for _, r := range a.tracker.Records() {
		leaked += r.InFlight
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.http.Shutdown(sctx)
	log.Info("stopped", zap.Int64("in_flight_at_exit", leaked))
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}
