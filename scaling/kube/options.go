package kube

import (
	"fmt"
	"time"

	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// Options configure a Controller. Zero fields take the defaults of
// DefaultOptions; Validate reports what is out of range.
type Options struct {
	// Namespace limits the watched Deployments and pods ("" = all).
	Namespace string
	// ExtprocNamespace and ExtprocService name the extproc Service whose
	// ready endpoints serve the snapshots.
	ExtprocNamespace, ExtprocService string
	// SnapshotPort is the EndpointSlice port name of the extproc admin
	// port, or its number.
	SnapshotPort string
	// SnapshotPath is the snapshot path on that port.
	SnapshotPath string

	// Tick is the decision interval.
	Tick time.Duration
	// FetchTimeout bounds one snapshot fetch.
	FetchTimeout time.Duration
	// Expire is how long a silent extproc replica's last values count.
	Expire time.Duration

	// LeaseNamespace/LeaseName name the Lease; Identity is this replica's
	// holder identity (its pod name).
	LeaseNamespace, LeaseName, Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod as in client-go leaderelection.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration

	// WriteWorkers bounds the parallel /scale writes of one tick.
	WriteWorkers int

	// Clock drives the tick loop (default: the real clock).
	Clock clock.WithTicker

	// SnapshotClient does the snapshot requests (default: a dedicated
	// http.Client).
	SnapshotClient collect.Doer
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

func (o *Options) applyDefaults() {
	d := DefaultOptions()
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	set(&o.ExtprocNamespace, d.ExtprocNamespace)
	set(&o.ExtprocService, d.ExtprocService)
	set(&o.SnapshotPort, d.SnapshotPort)
	set(&o.SnapshotPath, d.SnapshotPath)
	set(&o.LeaseNamespace, d.LeaseNamespace)
	set(&o.LeaseName, d.LeaseName)
	setD(&o.Tick, d.Tick)
	setD(&o.FetchTimeout, d.FetchTimeout)
	setD(&o.Expire, d.Expire)
	setD(&o.LeaseDuration, d.LeaseDuration)
	setD(&o.RenewDeadline, d.RenewDeadline)
	setD(&o.RetryPeriod, d.RetryPeriod)
	if o.WriteWorkers == 0 {
		o.WriteWorkers = d.WriteWorkers
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// Validate checks the options after defaults; the error names the field,
// the value and the allowed range.
func (o Options) Validate() error {
	o.applyDefaults()
	switch {
	case o.Identity == "":
		return fmt.Errorf("Identity: empty; want this replica's name (its pod name)")
	case o.Tick < 10*time.Millisecond || o.Tick > time.Minute:
		return fmt.Errorf("Tick: %v; want between 10ms and 1m", o.Tick)
	case o.FetchTimeout <= 0 || o.FetchTimeout >= o.Tick*10:
		return fmt.Errorf("FetchTimeout: %v; want > 0 and < 10 × Tick (%v)", o.FetchTimeout, o.Tick*10)
	case o.Expire < o.Tick:
		return fmt.Errorf("Expire: %v; want ≥ Tick (%v)", o.Expire, o.Tick)
	case o.RetryPeriod <= 0 || o.RenewDeadline <= o.RetryPeriod || o.LeaseDuration <= o.RenewDeadline:
		return fmt.Errorf("lease timing: duration %v, renew deadline %v, retry period %v; want duration > renew deadline > retry period > 0",
			o.LeaseDuration, o.RenewDeadline, o.RetryPeriod)
	case o.WriteWorkers < 1 || o.WriteWorkers > 64:
		return fmt.Errorf("WriteWorkers: %d; want between 1 and 64", o.WriteWorkers)
	}
	return nil
}
