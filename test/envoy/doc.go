// Package envoy is the Envoy-faithful ext_proc client used to test the
// inflight ext_proc server without an Envoy binary. It reproduces, item by
// item, the behaviour of Envoy's ext_proc HTTP filter described in
// shared/ENVOY.md §4 and istio/doc.go: one lazily opened side stream per
// HTTP request; the ext_proc filter configuration the install renders
// (Shipped = istio.ExternalProcessor for a profile and proxy generation:
// processing modes, observability mode, message and deferred-close
// timeouts, forward_rules, configured attributes), with no processing
// defaults of its own; headers and attributes as Envoy encodes them; the
// per-message timer with one override_message_timeout; failure_mode_allow;
// the close styles (half-close then reset only once the stream's bytes are
// written, graceful, deferred); the Envoy ≤ 1.36 and ≥ 1.37 stream
// lifetimes (including envoy#42507's close when the whole body arrived
// during the response-headers round trip); both local-reply behaviours
// (LocalReplies); and per-stream load balancing across replicas. It sends
// nothing Envoy would not send: no body in mode NONE, no trailers in mode
// SKIP (and no invented end-of-stream chunk), only configured attributes
// and forwarded headers.
//
// It owns: Client (one filter configuration against N replicas), Request
// (one HTTP exchange with its upstream plan and optional failure), Result
// (what happened, with the side stream's wire timeline), and NullProcessor
// (the CONTINUE-only reference server).
//
// Concurrency: Client.Do may be called from many goroutines; each call is
// one HTTP stream whose filter state is owned by that goroutine (and, after
// Do returns, by the goroutine performing a deferred or graceful close). A
// Result's Stream field is final only after Result.Wait. Client.Wait and
// Close must be called after the Do calls have returned. There is no
// package-level mutable state.
//
// Faithful reset: grpc-go drops a stream's not-yet-written DATA frames when
// the stream is cancelled, whereas Envoy's codec writes them before the
// RST_STREAM. The client therefore dials through a connection wrapper that
// parses the HTTP/2 frames it writes (HPACK-decoding headers to find the
// stream by a harness metadata tag) and resets a stream only after all its
// queued payload bytes (and END_STREAM, for a half-close) were written.
package envoy
