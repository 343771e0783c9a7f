package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/inflight-dev/inflight/istio"
)

// runEnvoyFilter renders an EnvoyFilter to stdout, after checking it with
// istio.Check (the same strict check the tests run on the shipped files).
func runEnvoyFilter(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var o istio.Options
	var selector, profile string
	var port, extprocPort uint
	fs := flag.NewFlagSet("envoyfilter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: inflightctl envoyfilter --namespace NS --selector k=v[,k=v] [--profile observe|control] [--port N] [--gateway | --outbound --port N] [--stream-timeouts D] | kubectl apply -f -\n\nflags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.Namespace, "namespace", "", "namespace of the model workloads (default istio-system with --gateway)")
	fs.StringVar(&selector, "selector", "", "labels of the model pods, k=v[,k=v] (default istio=ingressgateway with --gateway)")
	fs.StringVar(&profile, "profile", string(istio.ProfileObserve), "observe (no added latency) or control (Envoy waits on request headers)")
	fs.BoolVar(&o.Gateway, "gateway", false, "insert into an ingress gateway (context GATEWAY) instead of the workloads' inbound sidecars: counts, and with --profile control holds and sheds, per Service")
	fs.BoolVar(&o.Outbound, "outbound", false, "insert into the outbound listener of --port in the sidecars of in-mesh callers (--namespace/--selector select the callers; context SIDECAR_OUTBOUND; --profile control only): holds and sheds for callers inside the mesh")
	fs.UintVar(&port, "port", 0, "limit the sidecar patch to this inbound container port (default: every inbound HTTP port); with --outbound: the model Service's port (required)")
	fs.DurationVar(&o.StreamTimeouts, "stream-timeouts", 0, "edge contexts, control profile: also merge the HTTP connection manager's stream_idle_timeout and request_timeout to this (≥ your longest hold-timeout + 1s), for gateways whose own are shorter, e.g. Istio's EDGE connection profile (5m); 0 leaves them")
	fs.StringVar(&o.Name, "name", "", "EnvoyFilter name (default inflight-<selector values>, or inflight-gateway)")
	fs.StringVar(&o.ExtprocService, "extproc-service", istio.DefaultExtprocService, "extproc Service name")
	fs.StringVar(&o.ExtprocNamespace, "extproc-namespace", istio.DefaultExtprocNamespace, "extproc Service namespace")
	fs.UintVar(&extprocPort, "extproc-port", istio.DefaultExtprocPort, "extproc Service gRPC port (named grpc)")
	fs.DurationVar(&o.MessageTimeout, "message-timeout", istio.DefaultMessageTimeout, "control profile: longest wait for one extproc reply (request headers, response headers, trailers) before Envoy continues without it")
	fs.DurationVar(&o.DeferredCloseTimeout, "deferred-close-timeout", istio.DefaultDeferredCloseTimeout, "observe profile: how long Envoy keeps a stream open after its request is gone; every response with a body and no trailers is counted this much longer (10ms..1s)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("envoyfilter: unexpected arguments %q", fs.Args())
	}
	sel, err := istio.ParseSelector(selector)
	if err != nil {
		return err
	}
	if port > 65535 || extprocPort > 65535 {
		return fmt.Errorf("--port=%d / --extproc-port=%d: want at most 65535", port, extprocPort)
	}
	o.Selector, o.Profile, o.Port, o.ExtprocPort = sel, istio.Profile(profile), uint32(port), uint32(extprocPort)
	out, err := istio.Render(o)
	if err != nil {
		return err
	}
	if _, err := istio.Check(out); err != nil {
		return fmt.Errorf("rendered EnvoyFilter fails its own check (a bug, please report): %w", err)
	}
	_, err = stdout.Write(out)
	return err
}
