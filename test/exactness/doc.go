// Package exactness is the randomized proof that the inflight extproc
// server counts exactly behind Envoy: a seeded stream of requests (10,000;
// 100,000 in the long tier) with random response shapes (bodiless, SSE of
// up to 200 chunks, slow token streams, small bodies complete before the
// header reply, gRPC trailers), delays and failures at every phase, sent by
// the Envoy-faithful harness (test/envoy) on exactly the filter the install
// renders for each profile (observe, control) and proxy generation (Envoy
// ≤ 1.36, ≥ 1.37), with Envoy's three close orders and both local-reply
// behaviours, spread per stream over three real extproc replicas. The
// replicas have gates (ISSUE12.md) that a driver changes every 20 ms, as
// the leading controller would: edge requests of the control groups are
// held while their Service is at zero and released when it is not, and
// requests beyond small hold and in-flight limits are shed (429); now and
// then the table expires.
//
// Checked after every run: every target drains (in_flight 0, started =
// completed, nothing held, held_total = released + hold timeouts + client
// gone); some requests were held and some shed; every held request got
// exactly one override, every local reply is a 429 or 503 with Retry-After,
// and the servers counted every hold, shed and hold timeout the harness
// saw; per replica and namespace,
// the server started (or shed) every stream
// the harness opened, except starts it provably could not see (reset within
// a few ms with no reply, or never delivered by grpc-go), and every such
// miss is in the replica's streams_without_request_headers counter; per
// target busy-seconds = the sum of durations; per group busy-seconds within
// the harness's causal bounds; no server ends a request before an end
// signal was written; at most 3 messages per request. The mutation test
// puts deliberate counting bugs between gRPC and the real server (a dropped
// start, a lost end, an early end, an override sent twice) and requires
// each to be caught. Tests only; no shared state between tests.
package exactness
