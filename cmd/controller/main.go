// Command controller is inflight's autoscaler: it sums the extproc
// replicas' in-flight counts per workload, runs the scaling policy and writes
// replica targets to the annotated Deployments through the scale
// subresource. Two replicas run; one leads through a Lease. See package
// scaling/kube.
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
	"syscall"
	"time"

	"github.com/go-logr/zapr"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/inflight-dev/inflight/scaling/keda"
	"github.com/inflight-dev/inflight/scaling/kube"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	opts := DefaultOptions()
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
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
	// client-go (leader election, informers) logs through klog: send it to zap.
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()

	cfg, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes config (--kubeconfig=%q, else in-cluster): %w", opts.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = float32(opts.KubeQPS), opts.KubeBurst
	cfg.UserAgent = "inflight-controller"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kopts := opts.kube()
	var kedaSrv *grpc.Server
	if opts.KEDAListen != "" {
		ks := keda.New(nil)
		kopts.OnTick = ks.Update
		kl, err := net.Listen("tcp", opts.KEDAListen)
		if err != nil {
			return fmt.Errorf("--keda-listen: %w", err)
		}
		kedaSrv = grpc.NewServer()
		externalscaler.RegisterExternalScalerServer(kedaSrv, ks)
		go func() { _ = kedaSrv.Serve(kl) }()
		defer kedaSrv.Stop()
		log.Info("serving KEDA's external scaler API", zap.String("keda", kl.Addr().String()))
	}
	ctrl, err := kube.New(cs, kopts, log, kube.NewMetrics(reg))
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", opts.AdminListen)
	if err != nil {
		return fmt.Errorf("--admin-listen: %w", err)
	}
	srv := &http.Server{Handler: adminHandler(ctrl, reg), ReadHeaderTimeout: 5 * time.Second}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(lis) }()
	log.Info("started", zap.String("admin", lis.Addr().String()), zap.String("identity", opts.Identity),
		zap.String("extproc", opts.ExtprocNamespace+"/"+opts.ExtprocService))

	runErr := make(chan error, 1)
	go func() { runErr <- ctrl.Run(ctx) }()
	var result error
	select {
	case err := <-srvErr:
		result = fmt.Errorf("admin server: %w", err)
		stop()
		select {
		case <-runErr:
		case <-time.After(opts.ShutdownTimeout):
		}
	case err := <-runErr:
		result = err
	}
	if ctx.Err() != nil {
		log.Info("shutting down")
	}
	// Run has returned: the tick loop stopped and the Lease was released.
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("admin server shutdown", zap.Error(err))
	}
	return result
}

// adminHandler serves /healthz, /readyz (informer caches synced), /metrics
// and /v1/status.
func adminHandler(ctrl *kube.Controller, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ctrl.Ready() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("GET /v1/status", ctrl.StatusHandler())
	return mux
}
