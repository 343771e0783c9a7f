package kube

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
)

// electionConfig is a real client-go election on a Lease of a fake
// clientset (the Lease semantics under test are client-go's; the real API
// server's are covered by the integration tests).
func electionConfig(cs kubernetes.Interface, id string) leaderelection.LeaderElectionConfig {
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: "sys", Name: "lease"},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: id},
		},
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Callbacks: leaderelection.LeaderCallbacks{OnStoppedLeading: func() {}},
	}
}

func holder(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	l, err := cs.CoordinationV1().Leases("sys").Get(context.Background(), "lease", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ptr.Deref(l.Spec.HolderIdentity, "")
}

// On shutdown the running term ends first, then the Lease is released, then
// elect returns: the last write of a term never races a new leader.
func TestElectReleasesTheLeaseAfterTheTermEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := fake.NewClientset()
		ctx, cancel := context.WithCancel(context.Background())
		var terms atomic.Int32
		heldAtTermEnd := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- elect(ctx, electionConfig(cs, "c1"), func(ctx, lctx context.Context) {
				terms.Add(1)
				select {
				case <-ctx.Done():
				case <-lctx.Done():
				}
				time.Sleep(time.Second) // a last tick still writing
				heldAtTermEnd <- holder(t, cs)
			})
		}()
		time.Sleep(time.Second)
		synctest.Wait()
		if terms.Load() != 1 || holder(t, cs) != "c1" {
			t.Fatalf("after 1s: %d terms, holder %q; want 1 term held by c1", terms.Load(), holder(t, cs))
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if h := <-heldAtTermEnd; h != "c1" {
			t.Errorf("the Lease was held by %q while the term was ending, want c1 (released too early)", h)
		}
		if h := holder(t, cs); h != "" {
			t.Errorf("holder %q after elect returned, want the Lease released", h)
		}
		if terms.Load() != 1 {
			t.Errorf("%d terms, want 1", terms.Load())
		}
	})
}

// A term whose renewals fail (cut off from the API server) ends: lctx is
// done within the renew deadline. elect stays in the election and leads
// again, as a new term, once the API server answers again. (A Lease taken
// over by another holder is the integration tests' case: the fake
// clientset does not refuse stale updates as the API server does.)
func TestElectStartsANewTermAfterLosingTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := fake.NewClientset()
		var cut atomic.Bool
		cs.PrependReactor("*", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
			if cut.Load() {
				return true, nil, errors.New("cut off from the API server")
			}
			return false, nil, nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var terms atomic.Int32
		ended := make(chan time.Duration, 4)
		done := make(chan error, 1)
		go func() {
			done <- elect(ctx, electionConfig(cs, "c1"), func(ctx, lctx context.Context) {
				terms.Add(1)
				select {
				case <-ctx.Done():
				case <-lctx.Done():
				}
				ended <- 0
			})
		}()
		time.Sleep(time.Second)
		if terms.Load() != 1 {
			t.Fatalf("%d terms after 1s, want 1", terms.Load())
		}
		cut.Store(true)
		cutAt := time.Now()
		<-ended
		// The renew deadline (2s) plus one retry period (0.5s) bounds it.
		if d := time.Since(cutAt); d > 2500*time.Millisecond {
			t.Errorf("term ended %v after the cut, want ≤ renew deadline + retry period", d)
		}
		time.Sleep(5 * time.Second)
		if terms.Load() != 1 {
			t.Fatalf("%d terms while cut off, want still 1", terms.Load())
		}
		cut.Store(false)
		time.Sleep(5 * time.Second)
		if terms.Load() != 2 {
			t.Fatalf("%d terms 5s after the API server answers again, want 2", terms.Load())
		}
		if h := holder(t, cs); h != "c1" {
			t.Errorf("holder %q, want c1", h)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// A cancelled context before any win: elect returns without a term.
func TestElectCancelledBeforeLeading(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := fake.NewClientset()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var terms atomic.Int32
		if err := elect(ctx, electionConfig(cs, "c1"), func(ctx, lctx context.Context) { terms.Add(1) }); err != nil {
			t.Fatal(err)
		}
		if terms.Load() != 0 {
			t.Errorf("%d terms after a cancelled start", terms.Load())
		}
	})
}
