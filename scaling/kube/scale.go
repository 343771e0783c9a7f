package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"golang.org/x/sync/errgroup"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// write is one /scale write of a tick, and its outcome.
type write struct {
	w        collect.Workload
	dep      *appsv1.Deployment
	st       *wstate
	obs      scaling.Observation
	d        scaling.Decision
	from, to int32 // from: spec.replicas found by the write (== to: nothing written)
	err      error
}

// runWrites performs the tick's /scale writes in parallel, at most
// WriteWorkers at a time. Each write records its own outcome.
func (c *Controller) runWrites(ctx context.Context, writes []*write) {
	var g errgroup.Group
	g.SetLimit(c.opt.WriteWorkers)
	for _, wr := range writes {
		g.Go(func() error {
			wr.from, wr.err = c.scale(ctx, wr.w, wr.to)
			return nil // one failed write does not stop the others
		})
	}
	_ = g.Wait()
}

// scale writes spec.replicas through the scale subresource, retrying on
// Conflict. It returns the replicas it found: from == want means there was
// nothing to write.
func (c *Controller) scale(ctx context.Context, w collect.Workload, want int32) (from int32, err error) {
	api := c.cs.AppsV1().Deployments(w.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := api.GetScale(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		from = sc.Spec.Replicas
		if from == want {
			return nil
		}
		if c.beforeScaleUpdate != nil {
			c.beforeScaleUpdate(w.Namespace, w.Name)
		}
		sc.Spec.Replicas = want
		_, err = api.UpdateScale(ctx, w.Name, sc, metav1.UpdateOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			c.m.scaleConflicts.Inc()
		}
		return err
	})
	return from, err
}

// finish records the outcome of one write: Event, log, metrics, status.
func (c *Controller) finish(wr *write, now time.Time) {
	w, d := wr.w, wr.d
	if wr.err != nil {
		c.m.scaleWrites.WithLabelValues("error").Inc()
		c.log.Error("scale write failed", zap.String("workload", w.String()), zap.Int32("to", wr.to), zap.Error(wr.err))
		if !errors.Is(wr.err, context.Canceled) {
			c.recorder.Eventf(wr.dep, corev1.EventTypeWarning, ReasonScaleFailed, "could not scale to %d: %v", wr.to, wr.err)
		}
		return
	}
	wr.st.written, wr.st.writtenT = wr.to, now
	if wr.from == wr.to {
		return // already there: nothing was written
	}
	c.m.scaleWrites.WithLabelValues("ok").Inc()
	c.m.current.WithLabelValues(w.Namespace, w.Name).Set(float64(wr.to))
	reason := ReasonScaledUp
	if wr.to < wr.from {
		reason = ReasonScaledDown
	}
	c.recorder.Event(wr.dep, corev1.EventTypeNormal, reason, scaledMessage(wr.from, wr.to, d, wr.st.as.Config().Target, wr.obs))
	c.log.Info("scaled", zap.String("workload", w.String()), zap.Int32("from", wr.from), zap.Int32("to", wr.to),
		zap.Stringer("cause", d.Cause), zap.String("reason", d.Reason), zap.Float64("stable_demand", d.StableDemand),
		zap.Float64("panic_demand", d.PanicDemand), zap.Float64("trend", d.Trend), zap.Bool("panic", d.Panicking))
	ds := decisionStatus(d, wr.obs, true)
	ds.From = wr.from
	wr.st.last, wr.st.change = ds, ds
}

// scaledMessage is the ScaledUp/ScaledDown Event's message: the change, the
// policy's typed cause and the numbers behind it.
func scaledMessage(from, to int32, d scaling.Decision, target float64, o scaling.Observation) string {
	return fmt.Sprintf("scaled %d → %d: %s; sized for %.1f in flight at target %g per replica; in-flight now %.1f, ready %d, starting %d",
		from, to, d.Cause.Message(), d.PredictedDemand, target, o.InFlight, o.Ready, o.Starting)
}
