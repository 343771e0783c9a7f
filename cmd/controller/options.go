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

// Options are every setting of the controller binary.
type Options struct {
	Kubeconfig       string
	AdminListen      string
	Namespace        string
	ExtprocNamespace string
	ExtprocService   string
	SnapshotPort     string
	// SnapshotDialHost, when set, replaces the EndpointSlice address of
	// every snapshot request (the port is kept). Development only: the
	// local demo and the e2e test run every extproc on 127.0.0.1, which an
	// EndpointSlice may not hold.
	SnapshotDialHost string
	Tick             time.Duration
	FetchTimeout     time.Duration
	Expire           time.Duration
	LeaseNamespace   string
	LeaseName        string
	Identity         string
	LeaseDuration    time.Duration
	RenewDeadline    time.Duration
	RetryPeriod      time.Duration
	WriteWorkers     int
	KubeQPS          float64
	KubeBurst        int
	ShutdownTimeout  time.Duration
	Log              logging.Options
}

// DefaultOptions returns the shipped defaults.
func DefaultOptions() Options {
	k := kube.DefaultOptions()
	name, _ := os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		name = pod
	}
	leaseNS := k.LeaseNamespace
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		leaseNS = ns
	}
	return Options{
		AdminListen:      ":9090",
		ExtprocNamespace: k.ExtprocNamespace,
		ExtprocService:   k.ExtprocService,
		SnapshotPort:     k.SnapshotPort,
		Tick:             k.Tick,
		FetchTimeout:     k.FetchTimeout,
		Expire:           k.Expire,
		LeaseNamespace:   leaseNS,
		LeaseName:        k.LeaseName,
		Identity:         name,
		LeaseDuration:    k.LeaseDuration,
		RenewDeadline:    k.RenewDeadline,
		RetryPeriod:      k.RetryPeriod,
		WriteWorkers:     k.WriteWorkers,
		KubeQPS:          50,
		KubeBurst:        100,
		ShutdownTimeout:  10 * time.Second,
		Log:              logging.Defaults(),
	}
}

// Bind registers the flags on fs.
func (o *Options) Bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "path to a kubeconfig (default: in-cluster config)")
	fs.StringVar(&o.AdminListen, "admin-listen", o.AdminListen, "address of the admin HTTP server: /healthz, /readyz, /metrics, /v1/status")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "watch Deployments and pods in this namespace only (default: all)")
	fs.StringVar(&o.ExtprocNamespace, "extproc-namespace", o.ExtprocNamespace, "namespace of the extproc Service")
	fs.StringVar(&o.ExtprocService, "extproc-service", o.ExtprocService, "name of the extproc Service whose ready endpoints serve /v1/snapshot")
	fs.StringVar(&o.SnapshotPort, "snapshot-port", o.SnapshotPort, "name (or number) of the extproc Service's admin port")
	fs.StringVar(&o.SnapshotDialHost, "snapshot-dial-host", o.SnapshotDialHost, "development only: connect to this loopback address for every extproc snapshot instead of the EndpointSlice address, keeping its port (the local demo and e2e test)")
	fs.DurationVar(&o.Tick, "tick", o.Tick, "decision interval")
	fs.DurationVar(&o.FetchTimeout, "fetch-timeout", o.FetchTimeout, "timeout of one snapshot fetch")
	fs.DurationVar(&o.Expire, "expire", o.Expire, "how long a silent extproc replica's last values keep counting")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", o.LeaseNamespace, "namespace of the leader-election Lease (default: $POD_NAMESPACE, else inflight-system)")
	fs.StringVar(&o.LeaseName, "lease-name", o.LeaseName, "name of the leader-election Lease")
	fs.StringVar(&o.Identity, "identity", o.Identity, "this replica's holder identity (default: $POD_NAME, else the host name)")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "how long a non-renewed Lease stays valid")
	fs.DurationVar(&o.RenewDeadline, "renew-deadline", o.RenewDeadline, "how long the leader retries renewing before it gives up")
	fs.DurationVar(&o.RetryPeriod, "retry-period", o.RetryPeriod, "interval between Lease acquire/renew attempts")
	fs.IntVar(&o.WriteWorkers, "write-workers", o.WriteWorkers, "parallel /scale writes per tick")
	fs.Float64Var(&o.KubeQPS, "kube-qps", o.KubeQPS, "client-side rate limit of API requests per second")
	fs.IntVar(&o.KubeBurst, "kube-burst", o.KubeBurst, "client-side burst of API requests")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "on SIGTERM, how long to wait for the last tick and the Lease release")
	o.Log.AddFlags(fs)
}

// Validate reports every invalid option, naming the flag, the value and
// what is allowed.
func (o *Options) Validate() error {
	var errs []error
	bad := func(flag string, v any, want string) {
		errs = append(errs, fmt.Errorf("--%s=%v: want %s", flag, v, want))
	}
	if _, _, err := net.SplitHostPort(o.AdminListen); err != nil {
		bad("admin-listen", strconv.Quote(o.AdminListen), "host:port (host may be empty)")
	}
	for _, s := range []struct{ flag, v string }{
		{"extproc-namespace", o.ExtprocNamespace}, {"extproc-service", o.ExtprocService},
		{"snapshot-port", o.SnapshotPort}, {"lease-namespace", o.LeaseNamespace},
		{"lease-name", o.LeaseName}, {"identity", o.Identity},
	} {
		if s.v == "" {
			bad(s.flag, `""`, "a non-empty name")
		}
	}
	if ip := net.ParseIP(o.SnapshotDialHost); o.SnapshotDialHost != "" && (ip == nil || !ip.IsLoopback()) {
		bad("snapshot-dial-host", strconv.Quote(o.SnapshotDialHost), "empty or a loopback IP address such as 127.0.0.1")
	}
	if o.Tick < 10*time.Millisecond || o.Tick > time.Minute {
		bad("tick", o.Tick, "10ms to 1m")
	}
	if o.FetchTimeout <= 0 || o.FetchTimeout > o.Tick*10 {
		bad("fetch-timeout", o.FetchTimeout, fmt.Sprintf("> 0 and ≤ 10 × --tick (%v)", o.Tick*10))
	}
	if o.Expire < o.Tick || o.Expire > 10*time.Minute {
		bad("expire", o.Expire, fmt.Sprintf("--tick (%v) to 10m", o.Tick))
	}
	if o.RetryPeriod <= 0 || o.RetryPeriod > time.Minute {
		bad("retry-period", o.RetryPeriod, "> 0 and ≤ 1m")
	}
	if o.RenewDeadline <= o.RetryPeriod || o.RenewDeadline > 5*time.Minute {
		bad("renew-deadline", o.RenewDeadline, fmt.Sprintf("> --retry-period (%v) and ≤ 5m", o.RetryPeriod))
	}
	if o.LeaseDuration <= o.RenewDeadline || o.LeaseDuration > 10*time.Minute {
		bad("lease-duration", o.LeaseDuration, fmt.Sprintf("> --renew-deadline (%v) and ≤ 10m", o.RenewDeadline))
	}
	if o.WriteWorkers < 1 || o.WriteWorkers > 64 {
		bad("write-workers", o.WriteWorkers, "1 to 64")
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
	errs = append(errs, o.Log.Validate())
	return errors.Join(errs...)
}

// kube maps the options to the controller's.
func (o *Options) kube() kube.Options {
	k := kube.DefaultOptions()
	k.Namespace = o.Namespace
	k.ExtprocNamespace, k.ExtprocService, k.SnapshotPort = o.ExtprocNamespace, o.ExtprocService, o.SnapshotPort
	k.Tick, k.FetchTimeout, k.Expire = o.Tick, o.FetchTimeout, o.Expire
	k.LeaseNamespace, k.LeaseName, k.Identity = o.LeaseNamespace, o.LeaseName, o.Identity
	k.LeaseDuration, k.RenewDeadline, k.RetryPeriod = o.LeaseDuration, o.RenewDeadline, o.RetryPeriod
	k.WriteWorkers = o.WriteWorkers
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
