package e2e

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/scaling/kube"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/demo/stack"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

// Issue 10: forged claims across namespaces have no effect on a victim's
// replicas, end to end. The real extproc binary terminates mTLS with
// certificates of a mesh root made here and counts a request for namespace
// N only for a caller whose SPIFFE ID is in N; the real controller binary
// sums what the extproc counts for the victim's live pods. An attacker in
// another namespace holds 200 requests claiming the victim's pod and 200
// claiming its Service at the edge (which the controller maps to the
// Deployment): the extproc counts them as unauthorized, the victim stays
// at 1 replica. The
// victim's own 3 requests then scale it to 3: the path works.
func TestForgedClaimsAcrossNamespacesHaveNoEffect(t *testing.T) {
	testutil.SkipUnlessLong(t)
	cfg := controlplane.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bins := build(ctx, t)

	// The mesh: a root, the extproc's workload certificate (istio-agent's
	// three files), and a certificate per calling proxy.
	const extprocID = "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc"
	ca := testutil.NewMeshCA(t, "e2e mesh")
	certs := t.TempDir()
	chain, key, _ := ca.Issue(t, extprocID)
	for name, b := range map[string][]byte{"cert-chain.pem": chain, "key.pem": key, "root-cert.pem": ca.PEM} {
		if err := os.WriteFile(filepath.Join(certs, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, _, attackerCert := ca.Issue(t, "spiffe://cluster.local/ns/attacker/sa/default")
	_, _, victimCert := ca.Issue(t, "spiffe://cluster.local/ns/victim/sa/default")

	// Earlier tests' extproc endpoints (their processes are gone) would
	// only add failed fetches: remove them.
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.EnsureNamespace(ctx, cs, stack.SystemNamespace); err != nil {
		t.Fatal(err)
	}
	if err := cs.DiscoveryV1().EndpointSlices(stack.SystemNamespace).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + stack.ExtprocService}); err != nil {
		t.Fatal(err)
	}

	st, err := stack.Start(stack.Options{Bins: bins, Dir: t.TempDir(), Config: cfg, Tick: 200 * time.Millisecond,
		LeaseDuration: leaseDur, RenewDeadline: renewDL, RetryPeriod: retryPer,
		ExtprocArgs: []string{"--caller-identity", "mtls", "--tls-cert-chain", filepath.Join(certs, "cert-chain.pem"),
			"--tls-key", filepath.Join(certs, "key.pem"), "--tls-root-cert", filepath.Join(certs, "root-cert.pem")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if t.Failed() {
			dumpLogs(t, st)
		}
	})
	ep, err := st.StartExtproc(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.StartController(ctx, 20); err != nil {
		t.Fatal(err)
	}

	// The victim: an annotated Deployment with one Ready pod.
	for _, ns := range []string{"victim", "attacker"} {
		if err := stack.EnsureNamespace(ctx, st.Client, ns); err != nil {
			t.Fatal(err)
		}
	}
	lbl := map[string]string{"app": "llm"}
	if _, err := st.Client.AppsV1().Deployments("victim").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: "victim", Annotations: map[string]string{
			kube.TargetAnnotation: "1", "inflight.dev/max-replicas": "40", "inflight.dev/window": "6s", "inflight.dev/cold-start": "1s"}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "llm:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Its Service: edge targets (a gateway's or an outbound sidecar's) for
	// it count for the Deployment (issue 12), so forged edge claims are
	// tried too.
	if _, err := st.Client.CoreV1().Services("victim").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: "victim"},
		Spec: corev1.ServiceSpec{Selector: lbl, Ports: []corev1.ServicePort{{Name: "http", Port: 8000}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := st.Client.CoreV1().Pods("victim").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "llm-0", Namespace: "victim", Labels: lbl},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "llm:1"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := st.Client.CoreV1().Pods("victim").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := func() int32 {
		d, err := st.Client.AppsV1().Deployments("victim").Get(ctx, "llm", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return *d.Spec.Replicas
	}
	leader := waitLeader(ctx, t, st, nil, 30*time.Second)
	t.Logf("%s leads", leader.Identity)

	// hold sends n requests claiming claim as the proxy holding cert, each
	// held open until ctx ends.
	inbound := envoy.InboundAttributes("victim", "llm", "llm", "llm-0", "10.0.0.7", 8000)
	edge := envoy.GatewayAttributes("victim", "llm", 8000)
	hold := func(ctx context.Context, cert *tls.Certificate, claim map[string]any, n int) *sync.WaitGroup {
		c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137, MessageTimeout: 5 * time.Second,
			TLS: testutil.ProxyTLS(ca.Pool(), cert, extprocID)}, ep.GRPC)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Do(ctx, &envoy.Request{Attributes: claim, Response: envoy.Response{HeadersDelay: time.Hour}})
			}()
		}
		t.Cleanup(func() { wg.Wait(); c.Close() })
		return &wg
	}

	attack, stopAttack := context.WithCancel(ctx)
	defer stopAttack()
	hold(attack, &attackerCert, inbound, 200)
	hold(attack, &attackerCert, edge, 200)
	if err := stack.Poll(ctx, 30*time.Second, 100*time.Millisecond, func() bool {
		return unauthorized(ctx, ep.Admin) >= 400
	}); err != nil {
		t.Fatalf("the extproc never counted the 400 forged requests (inbound and edge) as unauthorized (it saw %d)", unauthorized(ctx, ep.Admin))
	}
	// 10 s = 50 ticks with 400 forged requests in flight: not one write.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if n := replicas(); n != 1 {
			t.Fatalf("the victim scaled to %d on forged claims", n)
		}
	}
	stopAttack()

	legit, stopLegit := context.WithCancel(ctx)
	defer stopLegit()
	hold(legit, &victimCert, inbound, 3)
	if err := stack.Poll(ctx, 30*time.Second, 100*time.Millisecond, func() bool { return replicas() == 3 }); err != nil {
		t.Fatalf("the victim's own 3 requests did not scale it to 3 (at %d): the test proves nothing", replicas())
	}
}

// unauthorized is the in-flight count of the extproc's unauthorized target.
func unauthorized(ctx context.Context, admin string) int64 {
	s, err := stack.Snapshot(ctx, admin)
	if err != nil {
		return -1
	}
	var n int64
	for _, r := range s.Targets {
		if r.Reason == "unauthorized" {
			n += r.InFlight
		}
	}
	return n
}
