// Package exactness is the randomized proof that the inflight extproc
// server counts exactly behind Envoy: a seeded stream of ≥ 100,000 requests
// with random phases, aborts, delays and interleavings, sent by the
// Envoy-faithful harness (test/envoy) under both Envoy lifetime profiles,
// both processing profiles and all close styles, spread per stream over
// three server replicas with their own trackers. Tests only; no shared
// state between tests.
package exactness
