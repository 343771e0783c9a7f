package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/inflight-dev/inflight/cmd/internal/logging"
	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
)

// The values of --caller-identity.
const (
	// identityXFCC: the extproc runs with its own Istio sidecar, which
	// terminates the callers' mTLS and forwards their identity in
	// x-forwarded-client-cert (the production default).
	identityXFCC = "xfcc"
	// identityMTLS: the extproc terminates mTLS itself with istio-agent's
	// certificate files and reads the caller's URI SAN.
	identityMTLS = "mtls"
	// identityTrustAttributes: no caller identity; the namespace a
	// request's attributes claim is believed. Development only: allowed
	// with a loopback --grpc-listen.
	identityTrustAttributes = "trust-attributes"
)

// Sanity ranges of the bounds; what they may be together is decided by
// --memory-limit (budget.go).
const (
	maxMaxTargets     = 100000
	maxMaxOpenStreams = 100000
	maxMaxConnections = 100000
)

// Options are every setting of the extproc binary.
type Options struct {
	GRPCListen  string
	AdminListen string
	ReplicaName string
	// DrainDelay is how long new streams are still accepted after SIGTERM;
	// DrainTimeout how long open streams may then finish.
	DrainDelay   time.Duration
	DrainTimeout time.Duration

	// Bounds on the tracker.
	MaxTargets             int
	MaxTargetsPerNamespace int
	TargetIdleTTL          time.Duration
	// Bounds on the gRPC server.
	MaxOpenStreams          int
	MaxConnections          int
	MaxStreamsPerConnection int
	MaxMessageBytes         int
	MaxConnectionIdle       time.Duration
	MaxConnectionAge        time.Duration
	// MemoryLimit is the container's memory limit (a Kubernetes quantity);
	// the bounds together must fit in 7/8 of it.
	MemoryLimit string

	// CallerIdentity is how the calling proxy's mesh identity is learned.
	CallerIdentity string
	// XFCCBy is the extproc's own SPIFFE ID, which its sidecar writes as
	// By= in the XFCC element it adds (xfcc mode).
	XFCCBy string
	// TLSCertChain, TLSKey and TLSRootCert are istio-agent's output files
	// (mtls mode); TLSReloadInterval is how often they are re-read.
	TLSCertChain, TLSKey, TLSRootCert string
	TLSReloadInterval                 time.Duration
	// GatewayIdentities may count requests for Services outside their own
	// namespace.
	GatewayIdentities []mesh.CallerRule

	// Holding and shedding (PUT /v1/gates; README, Scale to zero and
	// shedding): ReleaseDelay is how long a Service's gate must report
	// ready endpoints before its held requests are released, MaxHeld bounds
	// the requests held at once, RetryAfter is the Retry-After of the local
	// replies (shed, hold timeout).
	ReleaseDelay time.Duration
	MaxHeld      int
	RetryAfter   time.Duration

	Log logging.Options
}

// DefaultOptions returns the shipped defaults.
func DefaultOptions() Options {
	name, _ := os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		name = pod
	}
	return Options{
		GRPCListen:   ":9002",
		AdminListen:  ":9090",
		ReplicaName:  name,
		DrainTimeout: 25 * time.Second,

		MaxTargets:              extproc.DefaultMaxTargets,
		TargetIdleTTL:           extproc.DefaultIdleTTL,
		MaxOpenStreams:          10000,
		MaxConnections:          500,
		MaxStreamsPerConnection: 1000,
		MaxMessageBytes:         4 << 20,
		MaxConnectionIdle:       5 * time.Minute,
		MaxConnectionAge:        30 * time.Minute,
		MemoryLimit:             defaultMemoryLimit(),

		CallerIdentity:    identityXFCC,
		XFCCBy:            "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc",
		TLSCertChain:      "/etc/istio-output-certs/cert-chain.pem",
		TLSKey:            "/etc/istio-output-certs/key.pem",
		TLSRootCert:       "/etc/istio-output-certs/root-cert.pem",
		TLSReloadInterval: 10 * time.Second,
		ReleaseDelay:      extproc.DefaultReleaseDelay,
		MaxHeld:           extproc.DefaultMaxHeld,
		RetryAfter:        extproc.DefaultRetryAfter,
		Log:               logging.DefaultOptions(),
	}
}

// AddFlags registers the flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.GRPCListen, "grpc-listen", o.GRPCListen, "address of the ext_proc gRPC server (and the gRPC health service)")
	fs.StringVar(&o.AdminListen, "admin-listen", o.AdminListen, "address of the admin HTTP server: /v1/snapshot, /metrics, /healthz, /readyz (keep it inside the cluster)")
	fs.StringVar(&o.ReplicaName, "replica-name", o.ReplicaName, "name of this replica in snapshots (default: $POD_NAME, else the host name)")
	fs.DurationVar(&o.DrainDelay, "drain-delay", o.DrainDelay,
		"on SIGTERM, /readyz fails at once but new streams are still accepted for this long, while the endpoint's removal reaches every Envoy (istiod push + Envoy update)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout,
		"after --drain-delay, GOAWAY: open streams may finish for this long (long LLM generations), then the rest are cut (each releases its request); terminationGracePeriodSeconds must exceed --drain-delay + --drain-timeout")
	fs.IntVar(&o.MaxTargets, "max-targets", o.MaxTargets, "bound on target records; requests for further targets count under reason=\"overflow\"")
	fs.IntVar(&o.MaxTargetsPerNamespace, "max-targets-per-namespace", o.MaxTargetsPerNamespace,
		"bound on one namespace's target records, so one tenant cannot push others into overflow; beyond it that namespace's new targets count under reason=\"namespace_overflow\" (0: a quarter of --max-targets)")
	fs.DurationVar(&o.TargetIdleTTL, "target-idle-ttl", o.TargetIdleTTL,
		"a target with nothing in flight and no change for this long is evicted (keep it ≥ 10 × the controller's --tick and ≥ its --lease-duration + 2 × --tick)")
	fs.IntVar(&o.MaxOpenStreams, "max-open-streams", o.MaxOpenStreams,
		"streams tracked at once; a stream opened beyond it is answered at once (Envoy goes on without the extproc) and its request counted as untracked")
	fs.IntVar(&o.MaxConnections, "max-connections", o.MaxConnections, "gRPC connections open at once; one beyond it is closed at once (Envoy fails open)")
	fs.IntVar(&o.MaxStreamsPerConnection, "max-streams-per-connection", o.MaxStreamsPerConnection, "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: Envoy opens another connection beyond it")
	fs.IntVar(&o.MaxMessageBytes, "max-message-bytes", o.MaxMessageBytes, "largest ProcessingRequest accepted (a larger one ends its stream with RESOURCE_EXHAUSTED)")
	fs.DurationVar(&o.MaxConnectionIdle, "max-connection-idle", o.MaxConnectionIdle, "a connection without a stream for this long is closed with GOAWAY")
	fs.StringVar(&o.MemoryLimit, "memory-limit", o.MemoryLimit,
		"the container's memory limit (default $MEMORY_LIMIT, else 256Mi): the bounds together must fit in 7/8 of it, which is also the Go heap limit when GOMEMLIMIT is not set")
	fs.DurationVar(&o.MaxConnectionAge, "max-connection-age", o.MaxConnectionAge,
		"a connection older than this (±10 %) gets GOAWAY: no new streams, open ones run to their end (no grace limit: a request is never cut); 0 = never")
	fs.StringVar(&o.CallerIdentity, "caller-identity", o.CallerIdentity,
		"how the calling proxy's mesh identity is learned: xfcc (the extproc's own Istio sidecar forwards it in x-forwarded-client-cert), "+
			"mtls (this process terminates mTLS with istio-agent's files), or trust-attributes (none: believe the attributes; loopback --grpc-listen only)")
	fs.StringVar(&o.XFCCBy, "xfcc-by", o.XFCCBy, "xfcc: the extproc's own SPIFFE ID; only an XFCC element whose By= is this identity is believed")
	fs.StringVar(&o.TLSCertChain, "tls-cert-chain", o.TLSCertChain, "mtls: serving certificate chain (istio-agent OUTPUT_CERTS cert-chain.pem)")
	fs.StringVar(&o.TLSKey, "tls-key", o.TLSKey, "mtls: private key of the serving certificate (key.pem)")
	fs.StringVar(&o.TLSRootCert, "tls-root-cert", o.TLSRootCert, "mtls: the mesh's root certificates, which client certificates must chain to (root-cert.pem)")
	fs.DurationVar(&o.TLSReloadInterval, "tls-reload-interval", o.TLSReloadInterval, "mtls: how often the three files are re-read (certificate rotation)")
	fs.Func("gateway-identity",
		"a SPIFFE ID that may count requests for Services of any namespace (spiffe://TD/ns/NS/sa/SA), or only of the listed ones (…=ns1,ns2); repeatable",
		func(s string) error {
			r, err := mesh.ParseCallerRule(s)
			if err != nil {
				return err
			}
			o.GatewayIdentities = append(o.GatewayIdentities, r)
			return nil
		})
	fs.DurationVar(&o.ReleaseDelay, "release-delay", o.ReleaseDelay,
		"held requests of a Service are released once its gate has reported ready endpoints for this long: the margin for the new endpoint to reach the proxies (EndpointSlice, istiod's debounce and push, Envoy's update); released earlier, a request gets 503 no_healthy_upstream with no retry")
	fs.IntVar(&o.MaxHeld, "max-held", o.MaxHeld,
		"requests held at once on this replica, all Services (each is an open stream, so at most --max-open-streams are); beyond it a request for a Service with no ready endpoint is shed")
	fs.DurationVar(&o.RetryAfter, "retry-after", o.RetryAfter,
		"the Retry-After of the extproc's local replies: 429 for a shed request, 503 at a hold timeout (whole seconds, rounded up)")
	o.Log.AddFlags(fs)
}

// Validate reports every invalid option at once, naming the flag, the value
// and what is allowed.
func (o *Options) Validate() error {
	var errs []error
	for _, a := range []struct{ flag, v string }{{"grpc-listen", o.GRPCListen}, {"admin-listen", o.AdminListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("--%s=%q: want host:port (host may be empty): %v", a.flag, a.v, err))
		}
	}
	if o.GRPCListen == o.AdminListen {
		errs = append(errs, fmt.Errorf("--grpc-listen and --admin-listen are both %q: they must differ", o.GRPCListen))
	}
	if o.ReplicaName == "" {
		errs = append(errs, errors.New("--replica-name is empty: set it or $POD_NAME"))
	}
	if o.MaxTargets < 1 || o.MaxTargets > maxMaxTargets {
		errs = append(errs, fmt.Errorf("--max-targets=%d: want 1 to %d", o.MaxTargets, maxMaxTargets))
	}
	if o.MaxTargetsPerNamespace < 0 || o.MaxTargetsPerNamespace > o.MaxTargets {
		errs = append(errs, fmt.Errorf("--max-targets-per-namespace=%d: want 0 (a quarter of --max-targets) or 1 to --max-targets (%d)", o.MaxTargetsPerNamespace, o.MaxTargets))
	}
	if o.TargetIdleTTL < time.Minute || o.TargetIdleTTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("--target-idle-ttl=%s: want 1m to 24h", o.TargetIdleTTL))
	}
	if o.MaxOpenStreams < 1 || o.MaxOpenStreams > maxMaxOpenStreams {
		errs = append(errs, fmt.Errorf("--max-open-streams=%d: want 1 to %d", o.MaxOpenStreams, maxMaxOpenStreams))
	}
	if o.MaxConnections < 1 || o.MaxConnections > maxMaxConnections {
		errs = append(errs, fmt.Errorf("--max-connections=%d: want 1 to %d", o.MaxConnections, maxMaxConnections))
	}
	if o.MaxStreamsPerConnection < 1 || o.MaxStreamsPerConnection > maxMaxOpenStreams {
		errs = append(errs, fmt.Errorf("--max-streams-per-connection=%d: want 1 to %d", o.MaxStreamsPerConnection, maxMaxOpenStreams))
	}
	if o.MaxMessageBytes < 64<<10 || o.MaxMessageBytes > 16<<20 {
		errs = append(errs, fmt.Errorf("--max-message-bytes=%d: want 65536 (64 KiB) to 16777216 (16 MiB)", o.MaxMessageBytes))
	}
	if o.MaxConnectionIdle < time.Minute || o.MaxConnectionIdle > 24*time.Hour {
		errs = append(errs, fmt.Errorf("--max-connection-idle=%s: want 1m to 24h", o.MaxConnectionIdle))
	}
	if o.MaxConnectionAge != 0 && (o.MaxConnectionAge < time.Minute || o.MaxConnectionAge > 24*time.Hour) {
		errs = append(errs, fmt.Errorf("--max-connection-age=%s: want 0 (never) or 1m to 24h", o.MaxConnectionAge))
	}
	if o.DrainDelay < 0 || o.DrainDelay > 2*time.Minute {
		errs = append(errs, fmt.Errorf("--drain-delay=%s: want 0s to 2m", o.DrainDelay))
	}
	if o.DrainTimeout < 0 || o.DrainTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("--drain-timeout=%s: want 0s to 1h", o.DrainTimeout))
	}
	if o.ReleaseDelay < 0 || o.ReleaseDelay > time.Minute {
		errs = append(errs, fmt.Errorf("--release-delay=%s: want 0s to 1m", o.ReleaseDelay))
	}
	if o.MaxHeld < 1 || o.MaxHeld > maxMaxOpenStreams {
		errs = append(errs, fmt.Errorf("--max-held=%d: want 1 to %d", o.MaxHeld, maxMaxOpenStreams))
	}
	if o.RetryAfter < time.Second || o.RetryAfter > time.Hour {
		errs = append(errs, fmt.Errorf("--retry-after=%s: want 1s to 1h", o.RetryAfter))
	}
	if limit, err := parseMemory(o.MemoryLimit); err != nil {
		errs = append(errs, fmt.Errorf("--memory-limit=%q: want a Kubernetes memory quantity such as 256Mi: %v", o.MemoryLimit, err))
	} else if need, budget := o.memoryNeed(), memoryBudget(limit); need > budget {
		errs = append(errs, fmt.Errorf("--max-open-streams=%d, --max-targets=%d and --max-connections=%d may need %d MiB, more than 7/8 of --memory-limit=%s (%d MiB): lower one of them or raise the limit (README, Security → Limits)",
			o.MaxOpenStreams, o.MaxTargets, o.MaxConnections, need>>20, o.MemoryLimit, budget>>20))
	}
	switch o.CallerIdentity {
	case identityXFCC:
		if _, ok := mesh.ParseSPIFFE(o.XFCCBy); !ok {
			errs = append(errs, fmt.Errorf("--xfcc-by=%q: want the extproc's SPIFFE ID, spiffe://<trust domain>/ns/<namespace>/sa/<service account>", o.XFCCBy))
		}
	case identityMTLS:
		for _, f := range []struct{ flag, v string }{{"tls-cert-chain", o.TLSCertChain}, {"tls-key", o.TLSKey}, {"tls-root-cert", o.TLSRootCert}} {
			if f.v == "" {
				errs = append(errs, fmt.Errorf("--%s is empty: --caller-identity=mtls needs istio-agent's file", f.flag))
			}
		}
		if o.TLSReloadInterval < time.Second || o.TLSReloadInterval > 10*time.Minute {
			errs = append(errs, fmt.Errorf("--tls-reload-interval=%s: want 1s to 10m", o.TLSReloadInterval))
		}
	case identityTrustAttributes:
		if !loopback(o.GRPCListen) {
			errs = append(errs, fmt.Errorf("--caller-identity=trust-attributes with --grpc-listen=%q: believing attributes is allowed only on a loopback address (127.0.0.1, ::1, localhost)", o.GRPCListen))
		}
		if len(o.GatewayIdentities) > 0 {
			errs = append(errs, errors.New("--gateway-identity needs --caller-identity=xfcc or mtls (with trust-attributes there is no caller identity to match)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--caller-identity=%q: want xfcc, mtls or trust-attributes", o.CallerIdentity))
	}
	errs = append(errs, o.Log.Validate())
	return errors.Join(errs...)
}

// loopback reports whether a listen address binds loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
