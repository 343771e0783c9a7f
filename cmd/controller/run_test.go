package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/inflight-dev/inflight/scaling/kube"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/testutil"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }

// The binary's run(): kubeconfig, admin port, leadership, and on shutdown
// the Lease is released (holder cleared) before run returns.
func TestRunLeadsAndReleasesTheLease(t *testing.T) {
	kc := controlplane.KubeConfig(t)
	cs, err := kubernetes.NewForConfig(controlplane.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	admin := testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--kubeconfig=" + kc, "--admin-listen=" + admin, "--identity=run-test",
			"--lease-namespace=default", "--lease-name=run-test", "--tick=100ms", "--lease-duration=3s",
			"--renew-deadline=2s", "--retry-period=250ms", "--log-format=console", "--log-level=warn"})
	}()
	defer func() {
		cancel()
		<-done
	}()
	poll := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true,
			func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
	get := func(path string, v any) int {
		resp, err := http.Get(fmt.Sprintf("http://%s%s", admin, path))
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		if v != nil {
			_ = json.NewDecoder(resp.Body).Decode(v)
		}
		return resp.StatusCode
	}
	poll("/readyz 200", func() bool { return get("/readyz", nil) == http.StatusOK })
	poll("leadership in /v1/status", func() bool {
		var s kube.Status
		return get("/v1/status", &s) == http.StatusOK && s.Leader && s.Identity == "run-test"
	})
	l, err := cs.CoordinationV1().Leases("default").Get(context.Background(), "run-test", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "run-test" {
		t.Fatalf("lease = %+v, %v; want held by run-test", l, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of cancellation")
	}
	done <- nil // for the deferred receive
	l, err = cs.CoordinationV1().Leases("default").Get(context.Background(), "run-test", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
		t.Errorf("lease still held by %q after shutdown: not released", *l.Spec.HolderIdentity)
	}
}
