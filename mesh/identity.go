package mesh

import (
	"fmt"
	"net/url"
	"strings"
)

// Identity is a workload's mesh identity as Istio issues it in its
// certificates: the SPIFFE ID spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String returns the SPIFFE ID. It allocates: not for the hot path.
func (id Identity) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// ParseSPIFFE reads an Istio SPIFFE ID. The fields of the result are
// substrings of s: it does not allocate.
func ParseSPIFFE(s string) (Identity, bool) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, false
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, false
	}
	return identityFromPath(td, path)
}

// IdentityFromURL reads an Istio SPIFFE ID from a certificate's URI SAN as
// crypto/x509 parsed it. It does not allocate.
func IdentityFromURL(u *url.URL) (Identity, bool) {
	if u == nil || u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.RawQuery != "" ||
		u.Fragment != "" || u.ForceQuery || u.RawPath != "" || len(u.Path) < 2 || u.Path[0] != '/' {
		return Identity{}, false
	}
	return identityFromPath(u.Host, u.Path[1:])
}

// identityFromPath checks a trust domain and the path ns/<ns>/sa/<sa>.
func identityFromPath(td, path string) (Identity, bool) {
	ns, ok := strings.CutPrefix(path, "ns/")
	if !ok {
		return Identity{}, false
	}
	ns, sa, ok := strings.Cut(ns, "/sa/")
	if !ok || !isTrustDomain(td) || !isDNSLabel(ns) || !isDNSSubdomain(sa) {
		return Identity{}, false
	}
	return Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}, true
}

// isTrustDomain reports whether s is a SPIFFE trust domain name: lower-case
// letters, digits, '.', '-' and '_', at most 255 characters.
func isTrustDomain(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// XFCCHeader is the header (gRPC metadata key) in which an Envoy that
// terminated the caller's mTLS forwards the caller's certificate details.
const XFCCHeader = "x-forwarded-client-cert"

// LastXFCCElement reads the last element of an x-forwarded-client-cert value
// (Envoy's format: elements separated by ',', each a ';'-separated list of
// Key=Value pairs, values containing ',', ';' or '=' in double quotes) and
// returns its By (the identity of the Envoy that added the element) and URI
// (the caller's URI SAN). It fails unless the element has exactly one By and
// exactly one URI and both are plain (no escapes). Only the last element is
// trustworthy: with Envoy's APPEND_FORWARD, earlier ones are whatever the
// caller sent. The results are substrings of v.
func LastXFCCElement(v string) (by, uri string, ok bool) {
	// One pass: each element's pairs are read as they end; a ',' outside
	// quotes starts a new element and forgets the previous one.
	var nBy, nURI int
	bad, empty := false, true
	inQuote := false
	start := 0 // start of the current pair
	for i := 0; i <= len(v); i++ {
		if i < len(v) {
			switch c := v[i]; {
			case inQuote:
				if c == '\\' {
					i++ // the escaped character
				} else if c == '"' {
					inQuote = false
				}
				continue
			case c == '"':
				inQuote = true
				continue
			case c != ';' && c != ',':
				continue
			}
		}
		pair := strings.TrimSpace(v[start:i])
		k, val, hasEq := strings.Cut(pair, "=")
		switch {
		case !hasEq:
			bad = true
		case strings.EqualFold(k, "By"):
			nBy++
			by = val
		case strings.EqualFold(k, "URI"):
			nURI++
			uri = val
		}
		empty = empty && pair == ""
		if i < len(v) && v[i] == ',' { // a new element
			nBy, nURI, by, uri, bad, empty = 0, 0, "", "", false, true
		}
		start = i + 1
	}
	if inQuote || bad || empty || nBy != 1 || nURI != 1 {
		return "", "", false
	}
	if by, ok = unquote(by); !ok {
		return "", "", false
	}
	if uri, ok = unquote(uri); !ok {
		return "", "", false
	}
	if by == "" || uri == "" {
		return "", "", false
	}
	return by, uri, true
}

// unquote strips the double quotes of a quoted value. A value with an escape
// or a stray quote is refused: identities never contain either.
func unquote(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if strings.IndexByte(v, '"') >= 0 || strings.IndexByte(v, '\\') >= 0 {
		return "", false
	}
	return v, true
}

// CallerRule lets one mesh identity count requests for Services outside its
// own namespace: the ingress gateways. Namespaces empty means any namespace.
type CallerRule struct {
	Identity   Identity
	Namespaces []string
}

// String formats the rule as ParseCallerRule reads it.
func (r CallerRule) String() string {
	if len(r.Namespaces) == 0 {
		return r.Identity.String()
	}
	return r.Identity.String() + "=" + strings.Join(r.Namespaces, ",")
}

// ParseCallerRule reads "spiffe://<td>/ns/<ns>/sa/<sa>" (any namespace) or
// "spiffe://<td>/ns/<ns>/sa/<sa>=<ns>,<ns>,..." (only those namespaces).
func ParseCallerRule(s string) (CallerRule, error) {
	id, list, hasList := strings.Cut(s, "=")
	ident, ok := ParseSPIFFE(id)
	if !ok {
		return CallerRule{}, fmt.Errorf("%q is not a SPIFFE ID spiffe://<trust domain>/ns/<namespace>/sa/<service account>", id)
	}
	r := CallerRule{Identity: ident}
	if hasList {
		for _, ns := range strings.Split(list, ",") {
			if !isDNSLabel(ns) {
				return CallerRule{}, fmt.Errorf("namespace %q after '=' is not a Kubernetes namespace name", ns)
			}
			r.Namespaces = append(r.Namespaces, ns)
		}
	}
	return r, nil
}

// CallerPolicy decides for which namespace a calling proxy may count
// requests. The rule:
//   - a caller of the policy's trust domain may count requests for targets
//     in its own namespace (a sidecar for its own pod's workload; any target
//     of its namespace, since the namespace is the tenant boundary);
//   - a caller named in a CallerRule may also count requests for Services
//     (targets without a workload or pod: what a gateway sees) in the rule's
//     namespaces, or in any namespace if the rule lists none;
//   - everything else is refused (ReasonUnauthorized).
//
// Being a gateway is never trusted by itself (tenants can run their own):
// only the identities named in rules are. A CallerPolicy is immutable and
// safe for concurrent use; Authorize does not allocate.
type CallerPolicy struct {
	trustDomain string
	rules       map[Identity]scope
}

type scope struct {
	any        bool
	namespaces map[string]struct{}
}

// NewCallerPolicy returns the policy for callers of trustDomain plus rules.
func NewCallerPolicy(trustDomain string, rules []CallerRule) *CallerPolicy {
	p := &CallerPolicy{trustDomain: trustDomain, rules: make(map[Identity]scope, len(rules))}
	for _, r := range rules {
		s := p.rules[r.Identity]
		if len(r.Namespaces) == 0 {
			s.any = true
		}
		for _, ns := range r.Namespaces {
			if s.namespaces == nil {
				s.namespaces = map[string]struct{}{}
			}
			s.namespaces[ns] = struct{}{}
		}
		p.rules[r.Identity] = s
	}
	return p
}

// TrustDomain is the trust domain whose workloads may count for their own
// namespace.
func (p *CallerPolicy) TrustDomain() string { return p.trustDomain }

// Authorize returns ReasonNone when caller may count a request for t, else
// ReasonUnauthorized.
func (p *CallerPolicy) Authorize(caller Identity, t Target) Reason {
	if caller.TrustDomain == p.trustDomain && caller.Namespace == t.Namespace {
		return ReasonNone
	}
	if s, ok := p.rules[caller]; ok && t.Workload == "" && t.Pod == "" && t.Service != "" {
		if s.any {
			return ReasonNone
		}
		if _, ok := s.namespaces[t.Namespace]; ok {
			return ReasonNone
		}
	}
	return ReasonUnauthorized
}
