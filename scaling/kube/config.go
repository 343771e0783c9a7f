package kube

import (
	"errors"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// configure parses the annotations when they changed; an invalid set is
// reported once (Warning Event, log, metric) and the last valid
// configuration stays in force.
func (c *Controller) configure(w collect.Workload, dep *appsv1.Deployment, st *wstate, now time.Time) {
	fp := fingerprint(dep.Annotations)
	if fp == st.fp {
		return
	}
	st.fp = fp
	cfg, err := scaling.ParseAnnotations(dep.Annotations)
	if err != nil {
		st.cfgErr = err
		keep := "not scaling it until the annotations are valid"
		if st.cfg != nil {
			keep = "keeping the last valid configuration"
		}
		c.warnInvalid(dep, err, keep)
		c.log.Warn("invalid configuration", zap.String("workload", w.String()), zap.Error(err), zap.Bool("kept_previous", st.cfg != nil))
		c.m.invalidConfigs.Inc()
		c.m.setInvalid(w, true)
		return
	}
	st.cfgErr = nil
	c.m.setInvalid(w, false)
	st.cfg = &cfg
	if st.as == nil {
		st.as = scaling.NewAutoscaler(cfg, scaling.Features{}, now)
	} else {
		st.as.SetConfig(cfg)
	}
	c.log.Info("configuration", zap.String("workload", w.String()), zap.Float64("target", cfg.Target),
		zap.Int32("min", cfg.MinReplicas), zap.Int32("max", cfg.MaxReplicas))
}

// warnInvalid records one Warning Event per invalid annotation, naming it,
// its value and what is allowed, then what the controller does about it.
func (c *Controller) warnInvalid(dep *appsv1.Deployment, err error, then string) {
	var ce *scaling.ConfigError
	if errors.As(err, &ce) && len(ce.Fields) > 0 {
		for _, f := range ce.Fields {
			c.recorder.Eventf(dep, corev1.EventTypeWarning, ReasonInvalidConfig, "invalid annotation %v; %s", f, then)
		}
		return
	}
	c.recorder.Eventf(dep, corev1.EventTypeWarning, ReasonInvalidConfig, "%v; %s", err, then)
}

// strays warns, once per distinct annotation set, about the Deployments
// that carry inflight.dev/ annotations without inflight.dev/target or
// inflight.dev/slo-wait (a typo such as inflight.dev/targt, or a removed
// target): inflight does not
// manage them, and says so instead of ignoring them silently.
func (c *Controller) strays(t *term, deps []*appsv1.Deployment) {
	seen := make(map[collect.Workload]bool, len(deps))
	for _, dep := range deps {
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
		seen[w] = true
		fp := fingerprint(dep.Annotations)
		if t.stray[w] == fp {
			continue
		}
		t.stray[w] = fp
		_, err := scaling.ParseAnnotations(dep.Annotations)
		if err == nil {
			continue // cannot happen without the target; nothing to say
		}
		c.warnInvalid(dep, err, "inflight does not manage this Deployment until "+TargetAnnotation+" or "+SLOWaitAnnotation+" is set")
		c.log.Warn("inflight.dev/ annotations without "+TargetAnnotation+" or "+SLOWaitAnnotation, zap.String("workload", w.String()), zap.Error(err))
		c.m.invalidConfigs.Inc()
		c.m.setInvalid(w, true)
	}
	for w := range t.stray {
		if !seen[w] {
			delete(t.stray, w)
			if t.workloads[w] == nil {
				c.m.forget(w)
			}
		}
	}
}

// fingerprint is the sorted inflight.dev/ annotations of a Deployment.
func fingerprint(ann map[string]string) string {
	var kv []string
	for k, v := range ann {
		if strings.HasPrefix(k, scaling.AnnotationPrefix) {
			kv = append(kv, k+"="+v)
		}
	}
	sort.Strings(kv)
	return strings.Join(kv, "\x00")
}
