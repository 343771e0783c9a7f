// Package sim owns inflight-sim's trace simulator: request traces (the
// Azure CSV format and synthetic shapes), a discrete-event model of GPU
// replicas (batch limit, token-based service time, cold start, least-loaded
// routing in front of one FIFO queue, GPU time from request to removal),
// the policies compared (inflight through the real scaling package, and
// re-implementations of HPA v2 on CPU, Cortex and Knative KPA from their
// published algorithms and defaults, static peak provisioning and a
// clairvoyant reference), the knob sweeps, and the markdown and PNG
// reports.
//
// Every run is deterministic for a trace: the engine has no randomness and
// breaks ties by order; synthetic traces are drawn from a seeded generator.
// Concurrency: a Policy and an engine run belong to one goroutine;
// Experiment.Run runs independent simulations on a pool of workers and
// collects their results by index, so the worker count changes only the
// wall-clock time. There is no global mutable state.
package sim
