package extproc

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/test/envoy"
	inflighttest "github.com/inflight-dev/inflight/test/testutil"
)

const (
	extprocID = "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc"
	nsAID     = "spiffe://cluster.local/ns/team-a/sa/default"
	nsBID     = "spiffe://cluster.local/ns/team-b/sa/vllm"
	gatewayID = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
)

// writeAgentFiles writes istio-agent's three output files into dir.
func writeAgentFiles(t testing.TB, dir string, cert, key, roots []byte) (c, k, r string) {
	t.Helper()
	c, k, r = filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "root-cert.pem")
	for f, b := range map[string][]byte{c: cert, k: key, r: roots} {
		// Write then rename, as istio-agent replaces its files.
		if err := os.WriteFile(f+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
	return c, k, r
}

// serveProc runs a real extproc Server on a loopback gRPC listener.
func serveProc(t testing.TB, tr *Tracker, o ServerOptions, gopts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(gopts...)
	extprocv3.RegisterExternalProcessorServer(gs, NewServer(tr, o))
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// caller is one Envoy-like proxy: the harness client with its identity
// (TLS or XFCC metadata), sending n control-profile requests with attrs.
func callAs(t testing.TB, addr string, cfg envoy.Config, attrs map[string]any, n int) []*envoy.Result {
	t.Helper()
	cfg.Profile, cfg.Version = envoy.Control, envoy.Envoy137
	cfg.MessageTimeout = 5 * time.Second
	c, err := envoy.NewClient(cfg, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out []*envoy.Result
	for range n {
		out = append(out, c.Do(context.Background(), &envoy.Request{Attributes: attrs,
			Response: envoy.Response{Body: [][]byte{[]byte("data: x\n\n")}}}))
	}
	c.Wait()
	return out
}

// counts sums started requests per (namespace, workload, service, reason)
// once every request has ended: the client saw its streams close, the
// server's handlers return a moment later (bounded wait).
func counts(t testing.TB, tr *Tracker) map[string]uint64 {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, drained := map[string]uint64{}, true
		for _, r := range tr.Records() {
			if r.InFlight != 0 || r.Started != r.Completed {
				drained = false
				if time.Now().After(deadline) {
					t.Fatalf("not drained: %+v", r.TargetRecord)
				}
			}
			out[r.Namespace+"/"+r.Workload+"/"+r.Service+"/"+r.Reason] += r.Started
		}
		if drained {
			return out
		}
		time.Sleep(time.Millisecond)
	}
}

func equalCounts(t testing.TB, got, want map[string]uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}
}

var (
	podA = envoy.InboundAttributes("team-a", "chat", "chat", "chat-7d9f8b6c5d-x2k9p", "10.0.0.7", 8000)
	podB = envoy.InboundAttributes("team-b", "vllm", "vllm", "vllm-7d9f8b6c5d-q8w2z", "10.0.0.8", 8000)
	svcB = envoy.GatewayAttributes("team-b", "vllm", 8000)
)

func xfcc(by, uri string) string {
	return "By=" + by + ";Hash=6f1d0e;Subject=\"\";URI=" + uri
}

// TestXFCCCallersOverRealSockets: the extproc behind its own sidecar reads
// the caller from x-forwarded-client-cert. Claims for another namespace are
// refused and counted under "unauthorized"; the allow-listed gateway counts
// for Services; a missing, malformed or forged XFCC counts for nobody.
func TestXFCCCallersOverRealSockets(t *testing.T) {
	gw, _ := mesh.ParseCallerRule(gatewayID)
	tr := NewTracker(TrackerOptions{})
	addr := serveProc(t, tr, ServerOptions{
		Authenticator: XFCCAuthenticator{By: extprocID},
		Policy:        mesh.NewCallerPolicy("cluster.local", []mesh.CallerRule{gw}),
	})
	md := func(v string) envoy.Config { return envoy.Config{Metadata: map[string]string{mesh.XFCCHeader: v}} }
	type call struct {
		name  string
		cfg   envoy.Config
		attrs map[string]any
	}
	calls := []call{
		{"team-a's sidecar for its own pod", md(xfcc(extprocID, nsAID)), podA},
		{"team-a forging team-b's pod", md(xfcc(extprocID, nsAID)), podB},
		{"team-a forging team-b's Service as a gateway would", md(xfcc(extprocID, nsAID)), svcB},
		{"team-b's sidecar for its own pod", md(xfcc(extprocID, nsBID)), podB},
		{"the allow-listed gateway for team-b's Service", md(xfcc(extprocID, gatewayID)), svcB},
		{"the gateway claiming team-b's pod", md(xfcc(extprocID, gatewayID)), podB},
		{"no XFCC (plaintext, sidecar bypassed)", envoy.Config{}, podB},
		{"malformed XFCC", md("By=" + extprocID + ";URI=\"spiffe://x"), podB},
		{"forged XFCC: By is not this extproc's sidecar", md(xfcc("spiffe://cluster.local/ns/team-a/sa/fake-sidecar", nsBID)), podB},
		{"forged element prepended: the last one (team-a) is used", md(xfcc(extprocID, nsBID) + "," + xfcc(extprocID, nsAID)), podB},
		{"URI that is not a SPIFFE ID", md(xfcc(extprocID, "https://team-b.example/")), podB},
	}
	for _, c := range calls {
		for _, r := range callAs(t, addr, c.cfg, c.attrs, 3) {
			if r.FailOpen || r.Status != 200 {
				t.Fatalf("%s: the request must pass whatever its identity (fail-open, no error): %+v", c.name, r)
			}
		}
	}
	equalCounts(t, counts(t, tr), map[string]uint64{
		"team-a/chat/chat/":  3,  // own pod
		"team-b/vllm/vllm/":  3,  // team-b's own sidecar
		"team-b//vllm/":      3,  // the gateway
		"///unauthorized":    12, // team-a's pod and Service claims, the gateway's pod claim, the prepended forgery: 4 × 3
		"///unauthenticated": 12, // none, malformed, foreign By, non-SPIFFE URI
	})
}

// TestMTLSCallersOverRealSockets: the extproc terminates mTLS itself with
// istio-agent's files (a CA, workload certificates and SPIFFE IDs made
// here), over real TLS handshakes on loopback.
func TestMTLSCallersOverRealSockets(t *testing.T) {
	ca := inflighttest.NewMeshCA(t, "mesh root")
	srvCert, srvKey, _ := ca.Issue(t, extprocID)
	c, k, r := writeAgentFiles(t, t.TempDir(), srvCert, srvKey, ca.PEM)
	certs, err := NewCertReloader(c, k, r)
	if err != nil {
		t.Fatal(err)
	}
	if certs.Identity().String() != extprocID {
		t.Fatalf("own identity %v", certs.Identity())
	}
	gw, _ := mesh.ParseCallerRule(gatewayID + "=team-b")
	tr := NewTracker(TrackerOptions{})
	addr := serveProc(t, tr, ServerOptions{
		Authenticator: PeerCertAuthenticator{},
		Policy:        mesh.NewCallerPolicy(certs.Identity().TrustDomain, []mesh.CallerRule{gw}),
	}, grpc.Creds(credentials.NewTLS(certs.ServerConfig())))

	as := func(cert tls.Certificate) envoy.Config {
		return envoy.Config{TLS: inflighttest.ProxyTLS(ca.Pool(), &cert, extprocID)}
	}
	_, _, a := ca.Issue(t, nsAID)
	_, _, b := ca.Issue(t, nsBID)
	_, _, g := ca.Issue(t, gatewayID)
	_, _, twoURIs := ca.Issue(t, nsAID, nsBID)
	_, _, noURI := ca.Issue(t)
	_, _, foreign := inflighttest.NewMeshCA(t, "another mesh").Issue(t, nsBID)

	for _, c := range []struct {
		name     string
		cfg      envoy.Config
		attrs    map[string]any
		failOpen bool
	}{
		{"team-a for its own pod", as(a), podA, false},
		{"team-a forging team-b's pod", as(a), podB, false},
		{"team-b for its own pod", as(b), podB, false},
		{"gateway for team-b's Service (listed namespace)", as(g), svcB, false},
		{"gateway for team-a's Service (not listed)", as(g), envoy.GatewayAttributes("team-a", "chat", 8000), false},
		{"certificate with two SPIFFE IDs", as(twoURIs), podB, false},
		{"certificate without a URI SAN", as(noURI), podB, false},
		// Refused in the handshake: the stream never opens, Envoy fails
		// open, nothing is counted anywhere.
		{"no client certificate", envoy.Config{TLS: inflighttest.ProxyTLS(ca.Pool(), nil, extprocID)}, podB, true},
		{"certificate of another mesh's root", as(foreign), podB, true},
	} {
		for _, res := range callAs(t, addr, c.cfg, c.attrs, 2) {
			if res.FailOpen != c.failOpen || res.Status != 200 {
				t.Fatalf("%s: fail-open %v (%v), status %d; want fail-open %v and the request served",
					c.name, res.FailOpen, res.ProcessorErr, res.Status, c.failOpen)
			}
		}
	}
	equalCounts(t, counts(t, tr), map[string]uint64{
		"team-a/chat/chat/":  2,
		"team-b/vllm/vllm/":  2,
		"team-b//vllm/":      2,
		"///unauthorized":    4, // team-a's forgery, the gateway outside its list
		"///unauthenticated": 4, // two SPIFFE IDs, none
	})
}

// TestCertReloaderRotation: new files are picked up (a new root and a new
// serving certificate); inconsistent files are refused and the previous
// material keeps serving.
func TestCertReloaderRotation(t *testing.T) {
	dir := t.TempDir()
	oldCA := inflighttest.NewMeshCA(t, "root 1")
	sc, sk, _ := oldCA.Issue(t, extprocID)
	c, k, r := writeAgentFiles(t, dir, sc, sk, oldCA.PEM)
	certs, err := NewCertReloader(c, k, r)
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	addr := serveProc(t, tr, ServerOptions{
		Authenticator: PeerCertAuthenticator{},
		Policy:        mesh.NewCallerPolicy("cluster.local", nil),
	}, grpc.Creds(credentials.NewTLS(certs.ServerConfig())))
	_, _, oldA := oldCA.Issue(t, nsAID)
	if changed, err := certs.Reload(); changed || err != nil {
		t.Fatalf("unchanged files: changed %v, %v", changed, err)
	}

	// Rotation to a new root: istio-agent rewrites the three files.
	newCA := inflighttest.NewMeshCA(t, "root 2")
	sc2, sk2, _ := newCA.Issue(t, extprocID)
	writeAgentFiles(t, dir, sc2, sk2, newCA.PEM)
	if changed, err := certs.Reload(); !changed || err != nil {
		t.Fatalf("rotation not picked up: changed %v, %v", changed, err)
	}
	_, _, newA := newCA.Issue(t, nsAID)
	ok := callAs(t, addr, envoy.Config{TLS: inflighttest.ProxyTLS(newCA.Pool(), &newA, extprocID)}, podA, 1)[0]
	stale := callAs(t, addr, envoy.Config{TLS: inflighttest.ProxyTLS(newCA.Pool(), &oldA, extprocID)}, podA, 1)[0]
	if ok.FailOpen || !stale.FailOpen {
		t.Fatalf("after rotation: new-root client fail-open %v (want false), old-root client fail-open %v (want true)", ok.FailOpen, stale.FailOpen)
	}

	// A half-written rotation (key of another certificate) is refused.
	_, otherKey, _ := newCA.Issue(t, extprocID)
	writeAgentFiles(t, dir, sc2, otherKey, newCA.PEM)
	if changed, err := certs.Reload(); changed || err == nil {
		t.Fatalf("mismatched key accepted: changed %v, %v", changed, err)
	}
	// A serving certificate that does not chain to the roots is refused.
	writeAgentFiles(t, dir, sc, sk, newCA.PEM)
	if changed, err := certs.Reload(); changed || err == nil {
		t.Fatalf("certificate of another root accepted: changed %v, %v", changed, err)
	}
	if again := callAs(t, addr, envoy.Config{TLS: inflighttest.ProxyTLS(newCA.Pool(), &newA, extprocID)}, podA, 1)[0]; again.FailOpen {
		t.Fatalf("the previous material must keep serving: %v", again.ProcessorErr)
	}
	equalCounts(t, counts(t, tr), map[string]uint64{"team-a/chat/chat/": 2})

	if _, err := NewCertReloader(filepath.Join(dir, "missing.pem"), k, r); err == nil {
		t.Fatal("missing file accepted")
	}
}
