package kube

import (
	"context"
	"sync"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// election is the controller's leader-election configuration: its Lease,
// timings and the callbacks that keep Leading and the is_leader metric true.
// elect sets OnStartedLeading.
func (c *Controller) election() leaderelection.LeaderElectionConfig {
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: c.opt.LeaseNamespace, Name: c.opt.LeaseName},
			Client:     c.cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: c.opt.Identity},
		},
		Name:          c.opt.LeaseName,
		LeaseDuration: c.opt.LeaseDuration,
		RenewDeadline: c.opt.RenewDeadline,
		RetryPeriod:   c.opt.RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStoppedLeading: func() {
				c.leading.Store(false)
				c.m.leader.Set(0)
			},
			OnNewLeader: func(id string) {
				c.log.Info("leader", zap.String("identity", id), zap.Bool("self", id == c.opt.Identity))
			},
		},
	}
}

// elect takes part in leader elections until ctx is done. Each time this
// replica wins, lead runs one term: it must return when ctx or lctx (the
// term's context, cancelled when the Lease is lost) is done. A lost Lease
// starts a new election; a done ctx starts no new term.
//
// The order on shutdown is the point: the election outlives ctx until the
// running term has returned, so the Lease is released (ReleaseOnCancel)
// only after the term's last write, and elect returns only after the
// release. cfg.Callbacks.OnStartedLeading and ReleaseOnCancel are set here.
func elect(ctx context.Context, cfg leaderelection.LeaderElectionConfig, lead func(ctx, lctx context.Context)) error {
	electCtx, cancelElect := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelElect()
	var (
		mu       sync.Mutex
		stopping bool
		term     sync.WaitGroup // the running term, if any
	)
	go func() {
		<-ctx.Done()
		mu.Lock()
		stopping = true // no new term starts from here on
		mu.Unlock()
		term.Wait()
		cancelElect()
	}()
	cfg.ReleaseOnCancel = true
	cfg.Callbacks.OnStartedLeading = func(lctx context.Context) {
		mu.Lock()
		if stopping {
			mu.Unlock()
			return
		}
		term.Add(1)
		mu.Unlock()
		defer term.Done()
		lead(ctx, lctx)
	}
	for electCtx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return err
		}
		le.Run(electCtx) // returns when the Lease is lost or released
		if ctx.Err() != nil {
			break
		}
	}
	// le.Run has returned (the Lease is released); the term has ended.
	term.Wait()
	return nil
}

// lead runs the tick loop while this replica leads. A new term starts with
// fresh per-workload state: no scale-down before a full window of its own data.
func (c *Controller) lead(ctx, lctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	c.leading.Store(true)
	c.m.leader.Set(1)
	c.log.Info("started leading")
	defer c.log.Info("stopped leading")
	t := c.newTerm()
	tk := c.opt.Clock.NewTicker(c.opt.Tick)
	defer tk.Stop()
	wctx, stopWaits := context.WithCancel(lctx)
	defer stopWaits()
	go c.watchWakes(wctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-lctx.Done():
			return
		case <-tk.C():
			c.tick(lctx, t)
		case <-c.gatesNow:
			c.pushGatesNow(lctx, t)
		case <-c.wakeNow:
			c.m.wakeTicks.Inc()
			c.tick(lctx, t)
		}
	}
}
