// Package kube is the Kubernetes side of the inflight controller: it watches
// the Deployments that carry inflight.dev/target or inflight.dev/slo-wait, their pods
// (ready vs starting, observed cold starts), the Services and EndpointSlices
// of the watched namespaces (edge targets, ready endpoints) and the extproc
// Service's EndpointSlices (the snapshot URLs) through shared informers; it takes a
// coordination.k8s.io Lease (client-go leaderelection) and, while it leads,
// runs one tick per interval: collect (package collect) → policy (package
// scaling) → spec.replicas through the scale subresource with conflict
// retries, a Kubernetes Event for every change and a Warning Event for every
// invalid annotation; and it sends every extproc the gate table (PUT
// /v1/gates: holding at zero, shedding). The policy and the annotation parsing are not here:
// they come from package scaling.
//
// One file per concept:
//
//	controller.go  wiring: informers, indexers, Event recorder; Run
//	election.go    the leader election loop (elect) and the leader's tick loop
//	tick.go        one tick: view → fetch → decide per workload → write → publish
//	view.go        what a tick reads of the cluster: annotated Deployments, their
//	               live pods (which targets count for whom)
//	config.go      the annotations of a workload: parse, warn, keep the last valid
//	pods.go        a Deployment's pods: ready, starting, observed cold starts
//	endpoints.go   the extproc replicas from the EndpointSlices (ready, serving
//	               or terminating)
//	services.go    edge targets: a Service → the Deployments it selects, the shares
//	gates.go       the gate table: built per tick, pushed to every extproc each
//	               tick and at once on a Service's 0 → >0 ready endpoints
//	wake.go        one GET /v1/gates/wake wait per extproc replica: a tick at
//	               once when a request is held for a Service with no endpoint
//	hpa.go         managed Deployments an HPA (KEDA's) scales: skipped, warned
//	scale.go       /scale writes (bounded errgroup, conflict retries) and their Events
//	status.go      GET /v1/status
//	metrics.go     the Prometheus metrics
//	options.go     Options: defaults, flags, validation
//
// A new leadership term starts with fresh autoscalers, so a new leader
// never scales down before it has a full window of its own data.
//
// Concurrency: Run starts the informers and the election; the model
// EndpointSlice informer's handler only computes a Service's ready count and
// signals the tick loop (a buffered channel of one; ready is its own mutex);
// so do the leader's wake waits (one goroutine per extproc replica, which
// only read the endpoint lister and send on the channel).
// The leader's tick loop is one goroutine that owns every per-workload state and never holds
// a lock across network I/O (snapshot fetches and /scale writes run with no
// lock; writes of one tick run in parallel on a bounded pool, each writing
// only its own write value). The status the tick publishes is an immutable
// value behind a mutex, read by Status from any goroutine. Metrics are
// registered on the injected registry.
package kube
