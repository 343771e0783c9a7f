package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/inflight-dev/inflight/cmd/internal/logging"
	"github.com/inflight-dev/inflight/scaling/kube"
)

// Options are every setting of the controller binary: the controller's own
// (kube.Options, embedded), logging, and what only the binary owns.
type Options struct {
	kube.Options
	Log logging.Options

	Kubeconfig  string
	AdminListen string
	// SnapshotDialHost, when set, replaces the EndpointSlice address of
	// every snapshot request (the port is kept). Development only: the
	// local demo and the e2e test run every extproc on 127.0.0.1, which an
	// EndpointSlice may not hold.
	SnapshotDialHost string
	// KEDAListen, when set, serves KEDA's external scaler gRPC API there
	// (scaling/keda) from the leader's per-workload sums.
	KEDAListen      string
	KubeQPS         float64
	KubeBurst       int
	ShutdownTimeout time.Duration
}

// DefaultOptions returns the shipped defaults: kube.DefaultOptions with the
// identity from $POD_NAME (else the host name) and the Lease namespace from
// $POD_NAMESPACE when set.
func DefaultOptions() Options {
	k := kube.DefaultOptions()
	k.Identity, _ = os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		k.Identity = pod
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		k.LeaseNamespace = ns
	}
	return Options{
		Options:         k,
		Log:             logging.DefaultOptions(),
		AdminListen:     ":9090",
		KubeQPS:         50,
		KubeBurst:       100,
		ShutdownTimeout: 10 * time.Second,
	}
}

// AddFlags registers every flag on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	o.Options.AddFlags(fs)
	fs.Lookup("identity").Usage += " (default: $POD_NAME, else the host name)"
	fs.Lookup("lease-namespace").Usage += " (default: $POD_NAMESPACE, else inflight-system)"
	o.Log.AddFlags(fs)
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "path to a kubeconfig (default: in-cluster config)")
	fs.StringVar(&o.AdminListen, "admin-listen", o.AdminListen, "address of the admin HTTP server: /healthz, /readyz, /metrics, /v1/status")
	fs.StringVar(&o.SnapshotDialHost, "snapshot-dial-host", o.SnapshotDialHost, "development only: connect to this loopback address for every extproc snapshot instead of the EndpointSlice address, keeping its port (the local demo and e2e test)")
	fs.StringVar(&o.KEDAListen, "keda-listen", o.KEDAListen, "address of KEDA's external scaler gRPC API (ScaledObject trigger external-push; default: off; keep it inside the cluster)")
	fs.Float64Var(&o.KubeQPS, "kube-qps", o.KubeQPS, "client-side rate limit of API requests per second")
	fs.IntVar(&o.KubeBurst, "kube-burst", o.KubeBurst, "client-side burst of API requests")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "on SIGTERM, how long to wait for the last tick and the Lease release")
}

// Validate reports every invalid flag at once, naming it, its value and
// what is allowed.
func (o *Options) Validate() error {
	errs := []error{o.Options.Validate(), o.Log.Validate()}
	bad := func(flag string, v any, want string) {
		errs = append(errs, fmt.Errorf("--%s=%v: want %s", flag, v, want))
	}
	if _, _, err := net.SplitHostPort(o.AdminListen); err != nil {
		bad("admin-listen", strconv.Quote(o.AdminListen), "host:port (host may be empty)")
	}
	if _, _, err := net.SplitHostPort(o.KEDAListen); o.KEDAListen != "" && (err != nil || o.KEDAListen == o.AdminListen) {
		bad("keda-listen", strconv.Quote(o.KEDAListen), "empty (off) or host:port other than --admin-listen")
	}
	if ip := net.ParseIP(o.SnapshotDialHost); o.SnapshotDialHost != "" && (ip == nil || !ip.IsLoopback()) {
		bad("snapshot-dial-host", strconv.Quote(o.SnapshotDialHost), "empty or a loopback IP address such as 127.0.0.1")
	}
	if !(o.KubeQPS > 0 && o.KubeQPS <= 10000) {
		bad("kube-qps", o.KubeQPS, "> 0 and ≤ 10000")
	}
	if o.KubeBurst < 1 || o.KubeBurst > 100000 {
		bad("kube-burst", o.KubeBurst, "1 to 100000")
	}
	if o.ShutdownTimeout <= 0 || o.ShutdownTimeout > 5*time.Minute {
		bad("shutdown-timeout", o.ShutdownTimeout, "> 0 and ≤ 5m")
	}
	return errors.Join(errs...)
}

// kube returns the controller's options with the binary's snapshot client.
func (o *Options) kube() kube.Options {
	k := o.Options
	if o.SnapshotDialHost != "" {
		k.SnapshotClient = dialHostClient(o.SnapshotDialHost, o.FetchTimeout)
	}
	return k
}

// dialHostClient is an HTTP client that connects to host whatever address
// a request names, keeping the port.
func dialHostClient(host string, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		MaxIdleConnsPerHost: 4,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, network, net.JoinHostPort(host, port))
		},
	}}
}
