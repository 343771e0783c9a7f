// Command nullproc is the null ext_proc processor: it answers every message
// with the matching CONTINUE reply (nothing in observability mode) and
// counts nothing. It is the baseline that test/loadgen compares the real
// extproc against, served with the same gRPC server options as
// cmd/extproc. It listens on loopback only and stops on SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/inflight-dev/inflight/test/envoy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nullproc:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("nullproc", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9003", "loopback address of the gRPC server")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: must be a loopback IP", *listen)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// cmd/extproc's grpcLimits with its default flags, so that both servers
	// pay the same transport costs.
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.MaxHeaderListSize(64<<10),
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second,
			MaxConnectionIdle: 5 * time.Minute, MaxConnectionAge: 30 * time.Minute}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	extprocv3.RegisterExternalProcessorServer(gs, &envoy.NullProcessor{})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	return gs.Serve(lis)
}
