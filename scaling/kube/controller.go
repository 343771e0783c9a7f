package kube

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// TargetAnnotation and SLOWaitAnnotation each enable inflight on a
// Deployment (scaling.Enabled).
const (
	TargetAnnotation  = scaling.AnnotationPrefix + scaling.AnnTarget
	SLOWaitAnnotation = scaling.AnnotationPrefix + scaling.AnnSLOWait
)

// FieldManager is the field manager of the controller's writes.
const FieldManager = "inflight-controller"

// Event reasons.
const (
	ReasonScaledUp      = "ScaledUp"
	ReasonScaledDown    = "ScaledDown"
	ReasonInvalidConfig = "InvalidConfiguration"
	ReasonScaleFailed   = "ScaleFailed"
)

// Controller is one controller replica. Create it with New, then Run.
type Controller struct {
	opt Options
	cs  kubernetes.Interface
	log *zap.Logger
	m   *Metrics
	// collOpt configures each term's collector; the HTTP client (and its
	// idle connections) is shared across terms.
	collOpt collect.Options

	factory, epFactory informers.SharedInformerFactory
	deployIndexer      cache.Indexer
	pods               corelisters.PodLister
	podIndex           cache.Indexer
	slices             discoverylisters.EndpointSliceLister
	services           corelisters.ServiceLister
	// modelSlices lists the EndpointSlices of the watched namespaces: a
	// Service's ready endpoints for the gates (gates.go).
	modelSlices discoverylisters.EndpointSliceLister
	// atZero holds the Services seen with no ready endpoint, so that
	// sliceChanged can tell a 0 → >0 change; gatesNow asks the tick loop
	// to push the gates at once.
	atZeroMu sync.Mutex
	atZero   map[svcKey]struct{}
	gatesNow chan struct{}
	// wakeNow asks the tick loop for a tick at once: an extproc replica
	// holds a first request for a Service with no ready endpoint (wake.go).
	wakeNow chan struct{}
	synced  []cache.InformerSynced
	hpa     hpaGuard // hpa.go: Deployments an HPA (KEDA's) scales

	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder

	started atomic.Bool
	leading atomic.Bool

	statusMu sync.Mutex
	status   Status

	// beforeScaleUpdate, if set, runs between the GET and the UPDATE of a
	// scale write (tests use it to provoke a real Conflict).
	beforeScaleUpdate func(namespace, name string)
}

// New wires a Controller: informers for the Deployments and pods of
// opt.Namespace and for the extproc Service's EndpointSlices, the Event
// recorder and the collector's options. m receives the metrics.
func New(cs kubernetes.Interface, opt Options, log *zap.Logger, m *Metrics) (*Controller, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if opt.Clock == nil {
		opt.Clock = clock.RealClock{}
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Controller{opt: opt, cs: cs, log: log, m: m}
	c.collOpt = collect.Options{Timeout: opt.FetchTimeout, Expire: opt.Expire, Observer: m, Client: opt.SnapshotClient, Clock: opt.Clock}
	if c.collOpt.Client == nil {
		c.collOpt.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}
	}

	c.factory = informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(opt.Namespace))
	dInf := c.factory.Apps().V1().Deployments()
	if err := dInf.Informer().SetTransform(slimDeployment); err != nil {
		return nil, err
	}
	if err := dInf.Informer().AddIndexers(cache.Indexers{deployIndex: deployIndexKeys}); err != nil {
		return nil, err
	}
	c.deployIndexer = dInf.Informer().GetIndexer()
	pInf := c.factory.Core().V1().Pods()
	if err := pInf.Informer().SetTransform(slimPod); err != nil {
		return nil, err
	}
	if err := pInf.Informer().AddIndexers(cache.Indexers{podLabelIndex: podLabelKeys}); err != nil {
		return nil, err
	}
	c.podIndex = pInf.Informer().GetIndexer()
	// The Services of the watched namespaces: edge targets are Services,
	// mapped to the Deployments their selectors select (services.go).
	svcInf := c.factory.Core().V1().Services()
	if err := svcInf.Informer().SetTransform(slimService); err != nil {
		return nil, err
	}
	c.services = svcInf.Lister()
	msInf := c.factory.Discovery().V1().EndpointSlices()
	if err := msInf.Informer().SetTransform(slimModelSlice); err != nil {
		return nil, err
	}
	if _, err := msInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.sliceChanged(o) },
		UpdateFunc: func(_, o any) { c.sliceChanged(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			c.sliceChanged(o)
		},
	}); err != nil {
		return nil, err
	}
	c.modelSlices = msInf.Lister()
	c.atZero, c.gatesNow, c.wakeNow = map[svcKey]struct{}{}, make(chan struct{}, 1), make(chan struct{}, 1)
	c.epFactory = informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithNamespace(opt.ExtprocNamespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.LabelSelector = discoveryv1.LabelServiceName + "=" + opt.ExtprocService
		}))
	sInf := c.epFactory.Discovery().V1().EndpointSlices()
	c.pods, c.slices = pInf.Lister(), sInf.Lister()
	c.synced = []cache.InformerSynced{dInf.Informer().HasSynced, pInf.Informer().HasSynced, sInf.Informer().HasSynced,
		svcInf.Informer().HasSynced, msInf.Informer().HasSynced}

	c.broadcaster = record.NewBroadcaster(record.WithCorrelatorOptions(record.CorrelatorOptions{BurstSize: 100, QPS: 1}))
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: FieldManager, Host: opt.Identity})
	c.status = Status{Identity: opt.Identity}
	if err := c.watchHPAs(); err != nil {
		return nil, err
	}
	return c, nil
}

// Ready reports whether the informer caches have synced.
func (c *Controller) Ready() bool {
	if !c.started.Load() {
		return false
	}
	for _, s := range c.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Leading reports whether this replica holds the Lease.
func (c *Controller) Leading() bool { return c.leading.Load() }

// Run starts the informers and takes part in the leader election until ctx
// is done. On return the leader's tick loop has stopped and the Lease has
// been released.
func (c *Controller) Run(ctx context.Context) error {
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cs.CoreV1().Events("")})
	defer c.broadcaster.Shutdown()
	c.factory.Start(ctx.Done())
	c.epFactory.Start(ctx.Done())
	defer c.factory.Shutdown()
	defer c.epFactory.Shutdown()
	c.started.Store(true)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("kube: caches did not sync: %w", context.Cause(ctx))
	}
	c.log.Info("caches synced")
	return elect(ctx, c.election(), c.lead)
}
