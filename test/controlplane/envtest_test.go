package controlplane_test

import (
	"context"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/inflight-dev/inflight/test/controlplane"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }

// TestVersion proves the binaries are the ones build.sh stamps: the
// apiserver reports v1.37.2 (the -X ldflags took effect) and answers.
func TestVersion(t *testing.T) {
	cfg := controlplane.Config(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" || v.Major != "1" || v.Minor != "37" {
		t.Fatalf("server version = %+v, want v1.37.2 (1.37)", v)
	}
	if _, err := cs.CoordinationV1().Leases("default").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list leases: %v", err)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root + "/test/controlplane/build.sh"); err != nil {
		t.Fatalf("RepoRoot() = %s has no test/controlplane/build.sh: %v", root, err)
	}
}
