// Package mesh owns identity: it turns what Envoy tells the ext_proc server
// about a request (its CEL request attributes, see ENVOY.md §1.4 and §3.2) into
// the Kubernetes Target that receives the request, and it owns the list of
// attributes the EnvoyFilter must ask Envoy for (RequestAttributes), so the
// install and the parser can never disagree.
//
// Everything here is a pure function of its arguments: no I/O, no clocks, no
// shared state, safe for concurrent use. Attribute values are untrusted input:
// a value that is missing or malformed never causes a panic or an error to
// Envoy; the request is attributed to the unknown target with a Reason.
package mesh
