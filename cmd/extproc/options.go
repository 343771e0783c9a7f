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

// Options are every setting of the extproc binary.
type Options struct {
	GRPCListen   string
	AdminListen  string
	ReplicaName  string
	MaxTargets   int
	DrainTimeout time.Duration

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

	Log logging.Options
}

// DefaultOptions returns the shipped defaults.
func DefaultOptions() Options {
	name, _ := os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		name = pod
	}
	return Options{
		GRPCListen:        ":9002",
		AdminListen:       ":9090",
		ReplicaName:       name,
		MaxTargets:        1000,
		DrainTimeout:      25 * time.Second,
		CallerIdentity:    identityXFCC,
		XFCCBy:            "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc",
		TLSCertChain:      "/etc/istio-output-certs/cert-chain.pem",
		TLSKey:            "/etc/istio-output-certs/key.pem",
		TLSRootCert:       "/etc/istio-output-certs/root-cert.pem",
		TLSReloadInterval: 10 * time.Second,
		Log:               logging.DefaultOptions(),
	}
}

// AddFlags registers the flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.GRPCListen, "grpc-listen", o.GRPCListen, "address of the ext_proc gRPC server (and the gRPC health service)")
	fs.StringVar(&o.AdminListen, "admin-listen", o.AdminListen, "address of the admin HTTP server: /v1/snapshot, /metrics, /healthz, /readyz (keep it inside the cluster)")
	fs.StringVar(&o.ReplicaName, "replica-name", o.ReplicaName, "name of this replica in snapshots (default: $POD_NAME, else the host name)")
	fs.IntVar(&o.MaxTargets, "max-targets", o.MaxTargets, "bound on distinct targets; requests for further ones count under reason=\"overflow\"")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "on SIGTERM, how long open streams may finish before they are cut")
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
	if o.MaxTargets < 1 || o.MaxTargets > 100000 {
		errs = append(errs, fmt.Errorf("--max-targets=%d: want 1 to 100000", o.MaxTargets))
	}
	if o.DrainTimeout < 0 || o.DrainTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--drain-timeout=%s: want 0s to 10m", o.DrainTimeout))
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
