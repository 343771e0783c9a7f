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
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/inflight-dev/inflight/extproc"
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
	opts.Bind(fs)
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tracker := extproc.NewTracker(extproc.TrackerOptions{MaxTargets: opts.MaxTargets})
	metrics, err := extproc.NewMetrics(reg, tracker)
	if err != nil {
		return err
	}

	grpcLis, err := net.Listen("tcp", opts.GRPCListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen: %w", err)
	}
	adminLis, err := net.Listen("tcp", opts.AdminListen)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("--admin-listen: %w", err)
	}

	gs := grpc.NewServer(
		// Detect dead Envoy connections so their streams end (and their
		// requests are released) instead of lingering.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	extprocv3.RegisterExternalProcessorServer(gs, extproc.NewServer(tracker, metrics, log))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	var ready atomic.Bool
	admin := &extproc.Admin{Tracker: tracker, Replica: opts.ReplicaName, BootID: extproc.NewBootID(), Gatherer: reg, Ready: &ready}
	hsrv := &http.Server{Handler: admin.Handler(), ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() { errc <- hsrv.Serve(adminLis) }()
	ready.Store(true)
	log.Info("serving",
		zap.String("grpc", grpcLis.Addr().String()), zap.String("admin", adminLis.Addr().String()),
		zap.String("replica", opts.ReplicaName), zap.String("boot_id", admin.BootID))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}

	// Drain: report not ready first so Envoy and Kubernetes stop sending
	// new streams, let open streams finish up to the deadline, then cut the
	// rest. Every cut stream still ends its request (Process's defer).
	log.Info("draining", zap.Duration("deadline", opts.DrainTimeout))
	ready.Store(false)
	hs.Shutdown()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(opts.DrainTimeout):
		log.Warn("drain deadline passed; closing open streams")
		gs.Stop()
		<-done
	}
	var leaked int64
	for _, r := range tracker.Records() {
		leaked += r.InFlight
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hsrv.Shutdown(sctx)
	log.Info("stopped", zap.Int64("in_flight_at_exit", leaked))
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}
