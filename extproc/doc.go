// Package extproc owns the hot path: the Envoy ext_proc gRPC server that sees
// every ML request and the per-target tracker that counts them.
//
// A request starts when its request_headers message arrives and ends exactly
// once, at the first of: the response's end_of_stream (on the headers or on a
// body chunk), the response trailers, or the end of its gRPC stream for any
// reason (EOF, cancellation, error, server shutdown). A stream that ends before
// any response still ends its request once; a stream that never sent
// request_headers never counts anything.
//
// Concurrency: the Tracker is safe for concurrent use. Each target has its own
// small mutex that guards its counters (held for a few field updates, never
// across I/O); the set of targets is a sync.Map, so requests for different
// targets never contend and there is no global lock on the hot path. Readers
// (the snapshot API and the Prometheus collector) take each target's lock
// once per read. The Server keeps per-stream state on the stream's goroutine
// only.
//
// All Envoy protobuf plumbing (reading header values and attributes, building
// replies) lives in envoy.go.
package extproc
