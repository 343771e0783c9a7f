package mesh

import "strings"

// AttributesKey is the key under which Envoy puts the evaluated attributes in
// ProcessingRequest.attributes: the ext_proc filter's canonical name, whatever
// name the filter was given in the configuration.
const AttributesKey = "envoy.filters.http.ext_proc"

// The CEL expressions the EnvoyFilter asks Envoy to evaluate on the first
// request-direction message. Envoy sends each back under its literal text.
const (
	// AttrPod is the pod name of the proxy (its own pod on a sidecar).
	AttrPod = "xds.node.metadata['NAME']"
	// AttrNamespace is the namespace of the proxy's pod.
	AttrNamespace = "xds.node.metadata['NAMESPACE']"
	// AttrWorkload is Istio's workload name for the proxy's pod (the
	// Deployment name for pods owned by a Deployment).
	AttrWorkload = "xds.node.metadata['WORKLOAD_NAME']"
	// AttrNodeID is the proxy's node id, sidecar~IP~pod.ns~ns.svc.cluster.local.
	AttrNodeID = "xds.node.id"
	// AttrCluster is the upstream cluster: inbound|PORT|| on a sidecar's
	// inbound listener, outbound|PORT|SUBSET|HOST on a gateway.
	AttrCluster = "xds.cluster_name"
	// AttrServiceHost is the first Kubernetes Service that selects this pod
	// on the inbound port, as Istio's cluster metadata lists it.
	AttrServiceHost = "xds.cluster_metadata.filter_metadata['istio'].services[0].host"
)

// RequestAttributes returns the request attributes the EnvoyFilter must
// configure, in a stable order. It is the single source of truth for the
// install (istio/) and for Resolve.
func RequestAttributes() []string {
	return []string{AttrPod, AttrNamespace, AttrWorkload, AttrNodeID, AttrCluster, AttrServiceHost}
}

// Target is the Kubernetes workload that receives a request.
//
// On an inbound sidecar every field is known. At the edge (a gateway, or a
// caller's outbound sidecar) only the Service and its namespace are known
// when the request starts, so Workload and Pod are empty there; the
// controller maps such a Service to the Deployments it selects.
type Target struct {
	Namespace string
	Workload  string
	Service   string
	Pod       string
}

// Source says where a target's requests are seen (ISSUE12.md, "Where demand
// is seen"). It is a snapshot field: keep the values fixed.
type Source string

const (
	// SourceInbound: the inbound sidecar of a pod (the target has a
	// workload): requests that reached the pod.
	SourceInbound Source = "inbound"
	// SourceEdge: a gateway or a caller's outbound sidecar (the target is a
	// Service, with no workload or pod): every request for the Service,
	// including those held while the workload has no ready endpoint.
	SourceEdge Source = "edge"
)

// Source returns where the target's requests are seen, or "" for the zero
// Target and a namespace alone (the catch-all records).
func (t Target) Source() Source {
	switch {
	case t.Workload != "":
		return SourceInbound
	case t.Service != "":
		return SourceEdge
	}
	return ""
}

// Reason says why a request could not be attributed to a Target. The empty
// Reason means it was.
type Reason string

// The reasons a request is attributed to the unknown target. They are metric
// label values: keep them few, fixed and lower_snake_case.
const (
	ReasonNone           Reason = ""
	ReasonNoAttributes   Reason = "no_attributes"
	ReasonBadCluster     Reason = "malformed_cluster_name"
	ReasonNoNamespace    Reason = "no_namespace"
	ReasonNoWorkload     Reason = "no_workload"
	ReasonInvalidName    Reason = "invalid_name"
	ReasonUnknownCluster Reason = "unsupported_cluster"
	// ReasonUnauthenticated: the calling proxy's mesh identity could not be
	// established (no, malformed or forged x-forwarded-client-cert, no
	// client certificate). Such a request counts for nobody.
	ReasonUnauthenticated Reason = "unauthenticated"
	// ReasonUnauthorized: the caller's identity may not speak for the
	// namespace its attributes claim (CallerPolicy).
	ReasonUnauthorized Reason = "unauthorized"
	// ReasonOverflow is not returned by Resolve: the tracker uses it when the
	// number of distinct targets reaches its global bound.
	ReasonOverflow Reason = "overflow"
	// ReasonNamespaceOverflow is not returned by Resolve: the tracker uses it,
	// with the target's namespace kept, when one namespace reaches its own
	// bound on distinct targets.
	ReasonNamespaceOverflow Reason = "namespace_overflow"
)

// Attributes gives the string value of an attribute, if Envoy sent one.
type Attributes interface {
	Lookup(key string) (string, bool)
}

// Map is an Attributes backed by a map, for tests and tools.
type Map map[string]string

// Lookup implements Attributes.
func (m Map) Lookup(key string) (string, bool) {
	v, ok := m[key]
	return v, ok
}

// Resolve returns the target of a request from its attributes. When the
// reason is not ReasonNone the Target is the zero Target: the caller counts the
// request under the unknown target for that reason.
func Resolve(a Attributes) (Target, Reason) {
	cluster, hasCluster := lookup(a, AttrCluster)
	switch {
	case strings.HasPrefix(cluster, "outbound|"):
		return resolveOutbound(cluster)
	case strings.HasPrefix(cluster, "inbound|"), !hasCluster:
		return resolveInbound(a, hasCluster)
	default:
		return Target{}, ReasonUnknownCluster
	}
}

// resolveInbound reads a sidecar's own identity from its node metadata,
// falling back to the node id, and the Service from the cluster metadata.
func resolveInbound(a Attributes, hasCluster bool) (Target, Reason) {
	t := Target{}
	t.Pod, _ = lookup(a, AttrPod)
	t.Namespace, _ = lookup(a, AttrNamespace)
	t.Workload, _ = lookup(a, AttrWorkload)
	if t.Pod == "" || t.Namespace == "" {
		if id, ok := lookup(a, AttrNodeID); ok {
			pod, ns, ok := ParseNodeID(id)
			if ok && t.Pod == "" {
				t.Pod = pod
			}
			if ok && t.Namespace == "" {
				t.Namespace = ns
			}
		}
	}
	if host, ok := lookup(a, AttrServiceHost); ok {
		if svc, ns, ok := parseServiceHost(host); ok && (t.Namespace == "" || ns == t.Namespace) {
			t.Service = svc
			if t.Namespace == "" {
				t.Namespace = ns
			}
		}
	}
	if t.Workload == "" && t.Pod != "" {
		t.Workload = WorkloadFromPod(t.Pod)
	}
	switch {
	case !hasCluster && t == (Target{}):
		return Target{}, ReasonNoAttributes
	case t.Namespace == "":
		return Target{}, ReasonNoNamespace
	case t.Workload == "":
		return Target{}, ReasonNoWorkload
	}
	if !validTarget(t) {
		return Target{}, ReasonInvalidName
	}
	return t, ReasonNone
}

// resolveOutbound reads the Service from an outbound cluster name,
// outbound|PORT|SUBSET|svc.ns.svc.cluster.local.
func resolveOutbound(cluster string) (Target, Reason) {
	parts := strings.Split(cluster, "|")
	if len(parts) != 4 || parts[1] == "" {
		return Target{}, ReasonBadCluster
	}
	svc, ns, ok := parseServiceHost(parts[3])
	if !ok {
		return Target{}, ReasonBadCluster
	}
	return Target{Namespace: ns, Service: svc}, ReasonNone
}

// ParseNodeID reads the pod and namespace from an Istio sidecar node id,
// sidecar~10.0.0.7~pod.ns~ns.svc.cluster.local.
func ParseNodeID(id string) (pod, namespace string, ok bool) {
	kind, rest, _ := strings.Cut(id, "~")
	_, rest, _ = strings.Cut(rest, "~") // the IP
	podNS, domain, ok := strings.Cut(rest, "~")
	if kind != "sidecar" || !ok || strings.Contains(domain, "~") {
		return "", "", false
	}
	dot := strings.LastIndexByte(podNS, '.')
	if dot <= 0 || dot == len(podNS)-1 {
		return "", "", false
	}
	pod, namespace = podNS[:dot], podNS[dot+1:]
	if !isDNSSubdomain(pod) || !isDNSLabel(namespace) {
		return "", "", false
	}
	return pod, namespace, true
}

// parseServiceHost reads svc and ns from svc.ns.svc.<cluster domain>.
func parseServiceHost(host string) (svc, namespace string, ok bool) {
	svc, rest, ok1 := strings.Cut(host, ".")
	namespace, rest, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || (rest != "svc" && !strings.HasPrefix(rest, "svc.")) {
		return "", "", false
	}
	if !isDNSLabel(svc) || !isDNSLabel(namespace) {
		return "", "", false
	}
	return svc, namespace, true
}

// WorkloadFromPod guesses the owning workload from a pod name made by a
// Deployment (name-<replicaset hash>-<5 characters>) or a StatefulSet or
// DaemonSet-like controller (name-<suffix>). It is only used when Istio did
// not send WORKLOAD_NAME. A name without a dash is its own workload.
func WorkloadFromPod(pod string) string {
	i := strings.LastIndexByte(pod, '-')
	if i <= 0 {
		return pod
	}
	base := pod[:i]
	if j := strings.LastIndexByte(base, '-'); j > 0 && isReplicaSetHash(base[j+1:]) {
		return base[:j]
	}
	return base
}

// isReplicaSetHash reports whether s looks like a pod-template-hash: 6 to 10
// characters from Kubernetes' safe alphabet (bcdfghjklmnpqrstvwxz2456789).
func isReplicaSetHash(s string) bool {
	if len(s) < 6 || len(s) > 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune("bcdfghjklmnpqrstvwxz2456789", rune(s[i])) {
			return false
		}
	}
	return true
}

func validTarget(t Target) bool {
	return isDNSLabel(t.Namespace) && isDNSSubdomain(t.Workload) &&
		(t.Service == "" || isDNSLabel(t.Service)) && (t.Pod == "" || isDNSSubdomain(t.Pod))
}

func lookup(a Attributes, key string) (string, bool) {
	if a == nil {
		return "", false
	}
	v, ok := a.Lookup(key)
	return v, ok && v != ""
}

// isDNSLabel reports whether s is an RFC 1123 label: at most 63 lower-case
// alphanumerics or '-', starting and ending with an alphanumeric.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is an RFC 1123 subdomain of at most 253
// characters: labels separated by dots.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for {
		label, rest, more := strings.Cut(s, ".")
		if !isDNSLabel(label) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

// IsDNSLabel reports whether s is an RFC 1123 label, as Kubernetes
// namespace and Service names are.
func IsDNSLabel(s string) bool { return isDNSLabel(s) }

// IsDNSSubdomain reports whether s is an RFC 1123 subdomain, as Deployment
// and pod names are.
func IsDNSSubdomain(s string) bool { return isDNSSubdomain(s) }
