package kube

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"

	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// Options configure a Controller. Start from DefaultOptions: every setting
// that is a flag is declared once, here, with its default (DefaultOptions),
// its flag (AddFlags) and its allowed range (Validate). The binary embeds
// Options and adds only what it owns.
type Options struct {
	// Namespace limits the watched Deployments and pods ("" = all).
	Namespace string
	// ExtprocNamespace and ExtprocService name the extproc Service whose
	// endpoints serve the snapshots.
	ExtprocNamespace, ExtprocService string
	// SnapshotPort is the EndpointSlice port name of the extproc admin
	// port, or its number.
	SnapshotPort string
	// SnapshotPath is the snapshot path on that port (not a flag).
	SnapshotPath string

	// Tick is the decision interval.
	Tick time.Duration
	// FetchTimeout bounds one snapshot fetch.
	FetchTimeout time.Duration
	// Expire is how long a silent or vanished extproc replica's last values
	// count (and keep the tick partial).
	Expire time.Duration

	// LeaseNamespace/LeaseName name the Lease; Identity is this replica's
	// holder identity (its pod name).
	LeaseNamespace, LeaseName, Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod as in client-go leaderelection.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration

	// WriteWorkers bounds the parallel /scale writes of one tick.
	WriteWorkers int

	// Clock is the one clock of the controller: the tick loop's ticker, the
	// decision times and the collector's clock (nil: the real clock). Not
	// a flag.
	Clock clock.WithTicker

	// SnapshotClient does the snapshot requests (nil: a dedicated
	// http.Client). Not a flag.
	SnapshotClient collect.Doer

	// OnTick, when set, receives every leader tick's per-workload sums
	// (the KEDA external scaler, scaling/keda). Called on the tick loop:
	// it must not block. Not a flag.
	OnTick func(collect.Result)
}

// DefaultOptions returns the shipped defaults.
func DefaultOptions() Options {
	return Options{
		ExtprocNamespace: "inflight-system",
		ExtprocService:   "inflight-extproc",
		SnapshotPort:     "admin",
		SnapshotPath:     "/v1/snapshot",
		Tick:             time.Second,
		FetchTimeout:     500 * time.Millisecond,
		Expire:           10 * time.Second,
		LeaseNamespace:   "inflight-system",
		LeaseName:        "inflight-controller",
		LeaseDuration:    15 * time.Second,
		RenewDeadline:    10 * time.Second,
		RetryPeriod:      2 * time.Second,
		WriteWorkers:     4,
	}
}

// AddFlags registers the flags of every setting on fs, with the current
// values as defaults.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "watch Deployments and pods in this namespace only (default: all)")
	fs.StringVar(&o.ExtprocNamespace, "extproc-namespace", o.ExtprocNamespace, "namespace of the extproc Service")
	fs.StringVar(&o.ExtprocService, "extproc-service", o.ExtprocService, "name of the extproc Service whose endpoints serve /v1/snapshot")
	fs.StringVar(&o.SnapshotPort, "snapshot-port", o.SnapshotPort, "name (or number) of the extproc Service's admin port")
	fs.DurationVar(&o.Tick, "tick", o.Tick, "decision interval")
	fs.DurationVar(&o.FetchTimeout, "fetch-timeout", o.FetchTimeout, "timeout of one snapshot fetch")
	fs.DurationVar(&o.Expire, "expire", o.Expire, "how long a silent or vanished extproc replica's last values keep counting (the tick stays partial meanwhile)")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", o.LeaseNamespace, "namespace of the leader-election Lease")
	fs.StringVar(&o.LeaseName, "lease-name", o.LeaseName, "name of the leader-election Lease")
	fs.StringVar(&o.Identity, "identity", o.Identity, "this replica's holder identity (its pod name)")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "how long a non-renewed Lease stays valid")
	fs.DurationVar(&o.RenewDeadline, "renew-deadline", o.RenewDeadline, "how long the leader retries renewing before it gives up")
	fs.DurationVar(&o.RetryPeriod, "retry-period", o.RetryPeriod, "interval between Lease acquire/renew attempts")
	fs.IntVar(&o.WriteWorkers, "write-workers", o.WriteWorkers, "parallel /scale writes per tick")
}

// Validate reports every invalid setting at once, naming the flag, the
// value and the allowed range.
func (o Options) Validate() error {
	var errs []error
	bad := func(flag string, v any, want string) {
		errs = append(errs, fmt.Errorf("--%s=%v: want %s", flag, v, want))
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
	if len(o.SnapshotPath) == 0 || o.SnapshotPath[0] != '/' {
		errs = append(errs, fmt.Errorf("SnapshotPath %s: want an absolute path such as /v1/snapshot", strconv.Quote(o.SnapshotPath)))
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
	return errors.Join(errs...)
}
