package mesh

import (
	"net/url"
	"strings"
	"testing"
)

const (
	extprocID = "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc"
	modelsID  = "spiffe://cluster.local/ns/models/sa/default"
	gatewayID = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
)

func TestParseSPIFFE(t *testing.T) {
	tests := []struct {
		in   string
		want Identity
		ok   bool
	}{
		{modelsID, Identity{"cluster.local", "models", "default"}, true},
		{"spiffe://td_1.example/ns/a-b/sa/sa.with.dots", Identity{"td_1.example", "a-b", "sa.with.dots"}, true},
		{"spiffe://cluster.local/ns/models/sa/", Identity{}, false},
		{"spiffe://cluster.local/ns//sa/x", Identity{}, false},
		{"spiffe://cluster.local/ns/Models/sa/x", Identity{}, false},
		{"spiffe://cluster.local/ns/models", Identity{}, false},
		{"spiffe://cluster.local/sa/x/ns/models", Identity{}, false},
		{"spiffe:///ns/models/sa/x", Identity{}, false},
		{"spiffe://Cluster.Local/ns/models/sa/x", Identity{}, false},
		{"http://cluster.local/ns/models/sa/x", Identity{}, false},
		{"spiffe://cluster.local/ns/models/sa/x/extra", Identity{}, false},
		{"spiffe://cluster.local/ns/models/sa/x?q", Identity{}, false},
		{"", Identity{}, false},
	}
	for _, tc := range tests {
		got, ok := ParseSPIFFE(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseSPIFFE(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		if ok && got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestIdentityFromURL(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{modelsID, true},
		{"spiffe://cluster.local/ns/models/sa/default?x=1", false},
		{"spiffe://cluster.local/ns/models/sa/default#f", false},
		{"spiffe://user@cluster.local/ns/models/sa/default", false},
		{"spiffe://cluster.local:8080/ns/models/sa/default", false},
		{"spiffe:cluster.local/ns/models/sa/default", false},
		{"https://cluster.local/ns/models/sa/default", false},
		{"spiffe://cluster.local/ns/models/sa/de%2Ffault", false},
	} {
		u, err := url.Parse(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		id, ok := IdentityFromURL(u)
		if ok != tc.ok || (ok && id.String() != tc.in) {
			t.Errorf("IdentityFromURL(%q) = %+v, %v; want ok %v", tc.in, id, ok, tc.ok)
		}
	}
	if _, ok := IdentityFromURL(nil); ok {
		t.Error("nil URL")
	}
}

func TestLastXFCCElement(t *testing.T) {
	own := "By=" + extprocID + ";Hash=5f1e;Subject=\"\";URI=" + modelsID
	tests := []struct {
		name, in string
		by, uri  string
		ok       bool
	}{
		{"Istio's inbound sidecar element", own, extprocID, modelsID, true},
		{"with DNS SANs", own + ";DNS=a.example;DNS=b.example", extprocID, modelsID, true},
		{"quoted values", `By="` + extprocID + `";URI="` + modelsID + `"`, extprocID, modelsID, true},
		{"lower-case keys and spaces between pairs", " by=" + extprocID + " ; uri=" + modelsID + " ", extprocID, modelsID, true},
		{"no spaces around '='", "By =" + extprocID + ";URI=" + modelsID, "", "", false},
		{"forged elements before ours: the last one counts",
			"By=" + extprocID + ";URI=spiffe://cluster.local/ns/victim/sa/x," + own, extprocID, modelsID, true},
		{"a forged element hidden in a quoted subject is one element",
			"By=" + extprocID + ";Subject=\"CN=a,By=x\";URI=" + modelsID, extprocID, modelsID, true},
		{"a forged last element without By", own + ",URI=spiffe://cluster.local/ns/victim/sa/x", "", "", false},
		{"two By", own + ";By=" + extprocID, "", "", false},
		{"two URI (ambiguous caller)", own + ";URI=spiffe://cluster.local/ns/other/sa/x", "", "", false},
		{"empty URI (no URI SAN)", "By=" + extprocID + ";URI=", "", "", false},
		{"no URI", "By=" + extprocID + ";Hash=1", "", "", false},
		{"unterminated quote", own + ";Subject=\"CN=x", "", "", false},
		{"escaped quote in URI", `By=` + extprocID + `;URI="spiffe://x\"y"`, "", "", false},
		{"pair without '='", own + ";junk", "", "", false},
		{"trailing comma: empty last element", own + ",", "", "", false},
		{"empty", "", "", "", false},
	}
	for _, tc := range tests {
		by, uri, ok := LastXFCCElement(tc.in)
		if by != tc.by || uri != tc.uri || ok != tc.ok {
			t.Errorf("%s: LastXFCCElement(%q) = %q, %q, %v; want %q, %q, %v", tc.name, tc.in, by, uri, ok, tc.by, tc.uri, tc.ok)
		}
	}
}

func TestParseCallerRule(t *testing.T) {
	r, err := ParseCallerRule(gatewayID)
	if err != nil || r.Identity.Namespace != "istio-system" || r.Namespaces != nil || r.String() != gatewayID {
		t.Fatalf("any-namespace rule: %+v, %v", r, err)
	}
	r, err = ParseCallerRule(gatewayID + "=models,chat")
	if err != nil || len(r.Namespaces) != 2 || r.String() != gatewayID+"=models,chat" {
		t.Fatalf("listed rule: %+v, %v", r, err)
	}
	for _, bad := range []string{"", "istio-ingressgateway", "spiffe://cluster.local/ns/x", gatewayID + "=", gatewayID + "=Models", gatewayID + "=a,,b"} {
		if _, err := ParseCallerRule(bad); err == nil {
			t.Errorf("ParseCallerRule(%q) accepted", bad)
		}
	}
}

func TestCallerPolicyAuthorize(t *testing.T) {
	gw, _ := ParseCallerRule(gatewayID)
	teamGW, _ := ParseCallerRule("spiffe://cluster.local/ns/team-gw/sa/gw=models")
	p := NewCallerPolicy("cluster.local", []CallerRule{gw, teamGW})
	id := func(s string) Identity {
		i, ok := ParseSPIFFE(s)
		if !ok {
			t.Fatalf("bad id %q", s)
		}
		return i
	}
	pod := Target{Namespace: "models", Workload: "vllm", Service: "vllm", Pod: "vllm-0"}
	svc := Target{Namespace: "models", Service: "vllm"}
	other := Target{Namespace: "victim", Service: "llm"}
	tests := []struct {
		name   string
		caller string
		t      Target
		want   Reason
	}{
		{"own namespace, pod target", modelsID, pod, ReasonNone},
		{"own namespace, Service target", modelsID, svc, ReasonNone},
		{"another namespace's pod", "spiffe://cluster.local/ns/attacker/sa/default", pod, ReasonUnauthorized},
		{"another namespace's Service", "spiffe://cluster.local/ns/attacker/sa/default", svc, ReasonUnauthorized},
		{"same namespace name, other trust domain", "spiffe://evil.example/ns/models/sa/default", pod, ReasonUnauthorized},
		{"listed gateway, any namespace's Service", gatewayID, other, ReasonNone},
		{"listed gateway may not claim pods of other namespaces", gatewayID, pod, ReasonUnauthorized},
		{"gateway with a namespace list, listed namespace", "spiffe://cluster.local/ns/team-gw/sa/gw", svc, ReasonNone},
		{"gateway with a namespace list, other namespace", "spiffe://cluster.local/ns/team-gw/sa/gw", other, ReasonUnauthorized},
		{"another SA of the gateway's namespace is not the gateway", "spiffe://cluster.local/ns/istio-system/sa/other", svc, ReasonUnauthorized},
	}
	for _, tc := range tests {
		if got := p.Authorize(id(tc.caller), tc.t); got != tc.want {
			t.Errorf("%s: Authorize(%s, %+v) = %q, want %q", tc.name, tc.caller, tc.t, got, tc.want)
		}
	}
}

// TestIdentityHotPathDoesNotAllocate: what the server does per stream
// (parse the last XFCC element, the SPIFFE IDs, authorize) allocates nothing.
func TestIdentityHotPathDoesNotAllocate(t *testing.T) {
	gw, _ := ParseCallerRule(gatewayID)
	p := NewCallerPolicy("cluster.local", []CallerRule{gw})
	xfcc := "By=" + extprocID + ";Hash=5f1e;Subject=\"\";URI=" + gatewayID
	tg := Target{Namespace: "models", Service: "vllm"}
	var sink Reason
	allocs := testing.AllocsPerRun(1000, func() {
		by, uri, ok := LastXFCCElement(xfcc)
		if !ok || by != extprocID {
			t.Fatal("parse")
		}
		caller, ok := ParseSPIFFE(uri)
		if !ok {
			t.Fatal("spiffe")
		}
		sink = p.Authorize(caller, tg)
	})
	if allocs != 0 || sink != ReasonNone {
		t.Fatalf("%v allocations per stream (reason %q), want 0", allocs, sink)
	}
}

// FuzzLastXFCCElement: never panics; what it returns is a substring of the
// input without quotes or escapes, and it only succeeds when the input has a
// "By=" and a "URI=" somewhere.
func FuzzLastXFCCElement(f *testing.F) {
	f.Add("By=" + extprocID + ";Hash=1;Subject=\"\";URI=" + modelsID)
	f.Add("URI=a,By=b;URI=c")
	f.Add(`By="x";Subject="a,b;c=d";URI="y"`)
	f.Add(`"\`)
	f.Fuzz(func(t *testing.T, v string) {
		by, uri, ok := LastXFCCElement(v)
		if !ok {
			if by != "" || uri != "" {
				t.Fatalf("failed parse returned %q, %q", by, uri)
			}
			return
		}
		for _, s := range []string{by, uri} {
			if s == "" || !strings.Contains(v, s) || strings.ContainsAny(s, "\"\\") {
				t.Fatalf("value %q from %q", s, v)
			}
		}
		lv := strings.ToLower(v)
		if !strings.Contains(lv, "by=") || !strings.Contains(lv, "uri=") {
			t.Fatalf("accepted %q without By= and URI=", v)
		}
	})
}

// FuzzParseSPIFFE: never panics; an accepted ID prints back to itself and
// its parts are valid names.
func FuzzParseSPIFFE(f *testing.F) {
	f.Add(modelsID)
	f.Add("spiffe://a/ns/b/sa/c")
	f.Add("spiffe://a/ns/b/sa/c/sa/d")
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := ParseSPIFFE(s)
		if !ok {
			return
		}
		if id.String() != s || !isTrustDomain(id.TrustDomain) || !isDNSLabel(id.Namespace) || !isDNSSubdomain(id.ServiceAccount) {
			t.Fatalf("ParseSPIFFE(%q) = %+v", s, id)
		}
		if u, err := url.Parse(s); err == nil {
			if id2, ok := IdentityFromURL(u); ok && id2 != id {
				t.Fatalf("URL form disagrees: %+v vs %+v", id2, id)
			}
		}
	})
}

// BenchmarkXFCCIdentity is what the server does per request in xfcc mode
// once it has the header value: read the last element, the SPIFFE ID, and
// authorize the claim.
func BenchmarkXFCCIdentity(b *testing.B) {
	gw, _ := ParseCallerRule(gatewayID)
	p := NewCallerPolicy("cluster.local", []CallerRule{gw})
	xfcc := "By=" + extprocID + ";Hash=5f1e0c2a9d4b7e8f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081;Subject=\"\";URI=" + modelsID
	tg := Target{Namespace: "models", Workload: "vllm", Service: "vllm", Pod: "vllm-0"}
	b.ReportAllocs()
	for b.Loop() {
		by, uri, ok := LastXFCCElement(xfcc)
		if !ok || by != extprocID {
			b.Fatal("parse")
		}
		caller, _ := ParseSPIFFE(uri)
		if p.Authorize(caller, tg) != ReasonNone {
			b.Fatal("refused")
		}
	}
}
