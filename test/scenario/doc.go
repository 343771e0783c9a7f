// Package scenario drives the real inflight extproc server (in-process,
// over real 127.0.0.1 gRPC sockets) with the Envoy-faithful harness of
// test/envoy, one named scenario at a time, for both Envoy lifetime
// profiles and both processing profiles, and checks after each that every
// counter returns to zero with started = completed. Tests only; no state
// is shared between tests.
package scenario
