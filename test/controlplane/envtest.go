// Package controlplane starts the real test control plane (kube-apiserver and
// etcd built by test/controlplane/build.sh into .cache/controlplane/bin) through
// controller-runtime's envtest, for integration tests of the main module.
//
// Use it from one TestMain per test package:
//
//	func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }
//
// and in each test take the admin config with controlplane.Config(t): the
// first call starts the control plane (≈ 5 s), Main stops it. When the
// binaries are missing the tests skip with a message naming build.sh, unless
// INFLIGHT_REQUIRE_CONTROLPLANE=1 is set (as in CI), in which case they fail.
//
// Concurrency: Config may be called from any goroutine (the start runs
// once); Main runs once per test binary.
package controlplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// RequireEnv names the environment variable that turns a missing control
// plane from a skip into a failure.
const RequireEnv = "INFLIGHT_REQUIRE_CONTROLPLANE"

// ErrMissing is returned (wrapped) when the binaries have not been built.
var ErrMissing = errors.New("test control plane binaries missing: run test/controlplane/build.sh")

// BinDir returns the folder holding kube-apiserver and etcd: $KUBEBUILDER_ASSETS
// when set, else <repo>/.cache/controlplane/bin where <repo> is the first
// ancestor of the working directory holding a go.mod of the main module.
func BinDir() (string, error) {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "controlplane", "bin"), nil
}

// RepoRoot walks up from the working directory to the folder whose go.mod
// declares the module github.com/inflight-dev/inflight.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for i := 0; i < 64; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isMainModule(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("controlplane: no go.mod of github.com/inflight-dev/inflight above the working directory")
}

func isMainModule(gomod []byte) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		if strings.TrimSpace(line) == "module github.com/inflight-dev/inflight" {
			return true
		}
	}
	return false
}

// Env is a running control plane.
type Env struct {
	// Config authenticates as an admin (group system:masters).
	Config *rest.Config
	env    *envtest.Environment
}

// Start checks the binaries and starts etcd and kube-apiserver on loopback.
// The error wraps ErrMissing when the binaries have not been built.
func Start() (*Env, error) {
	if err := binaries(); err != nil {
		return nil, err
	}
	dir, err := BinDir()
	if err != nil {
		return nil, err
	}
	ctrllog.SetLogger(logr.Discard())
	e := &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// envtest reads KUBEBUILDER_ASSETS before BinaryAssetsDirectory.
	if err := os.Setenv("KUBEBUILDER_ASSETS", dir); err != nil {
		return nil, err
	}
	cfg, err := e.Start()
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("controlplane: start kube-apiserver/etcd from %s: %w", dir, err)
	}
	return &Env{Config: cfg, env: e}, nil
}

// KubeConfig returns an admin kubeconfig for the control plane.
func (e *Env) KubeConfig() []byte { return e.env.KubeConfig }

// Stop stops kube-apiserver and etcd and removes their data.
func (e *Env) Stop() error { return e.env.Stop() }

// Required reports whether INFLIGHT_REQUIRE_CONTROLPLANE=1.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// shared is the package's one control plane, started by the first Config
// (or KubeConfig) call of a test binary and stopped by Main.
var shared struct {
	once sync.Once
	env  *Env
	err  error
}

// binaries checks that kube-apiserver and etcd exist; the error wraps
// ErrMissing.
func binaries() error {
	dir, err := BinDir()
	if err != nil {
		return err
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
			return fmt.Errorf("%w (no %s in %s)", ErrMissing, name, dir)
		}
	}
	return nil
}

// Main runs the package's tests and stops the control plane if one of them
// started it; it returns the exit code for os.Exit. The control plane starts
// on the first Config call, so a test binary whose tests all skip (the long
// tier is off) pays nothing. Missing binaries with
// INFLIGHT_REQUIRE_CONTROLPLANE=1 make it fail without running tests;
// otherwise tests that need them skip.
func Main(m *testing.M) int {
	if err := binaries(); err != nil {
		if !errors.Is(err, ErrMissing) || Required() {
			fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
			if errors.Is(err, ErrMissing) {
				fmt.Fprintf(os.Stderr, "FAIL: %s=1 requires the control plane\n", RequireEnv)
			}
			return 1
		}
		fmt.Fprintf(os.Stderr, "controlplane: %v; integration tests will skip\n", err)
	}
	code := m.Run()
	if shared.env != nil {
		if err := shared.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "controlplane: stop: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// started starts the shared control plane once.
func started() (*Env, error) {
	shared.once.Do(func() {
		start := time.Now()
		shared.env, shared.err = Start()
		if shared.err == nil {
			fmt.Fprintf(os.Stderr, "controlplane: kube-apiserver %s up in %v\n", shared.env.Config.Host, time.Since(start).Round(10*time.Millisecond))
		}
	})
	return shared.env, shared.err
}

// KubeConfig writes an admin kubeconfig of the shared control plane into
// the test's temporary directory and returns its path, or skips (fails with
// INFLIGHT_REQUIRE_CONTROLPLANE=1) the test.
func KubeConfig(t testing.TB) string {
	t.Helper()
	Config(t)
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, shared.env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Config returns a copy of the admin config of the shared control plane,
// starting it on the first call. Missing binaries skip the test (fail it
// with INFLIGHT_REQUIRE_CONTROLPLANE=1); any other start failure fails it.
// Call Main from TestMain so that the control plane is stopped.
func Config(t testing.TB) *rest.Config {
	t.Helper()
	env, err := started()
	if err != nil {
		if errors.Is(err, ErrMissing) && !Required() {
			t.Skipf("%v", err)
		}
		t.Fatalf("%v (%s=%q)", err, RequireEnv, os.Getenv(RequireEnv))
	}
	return rest.CopyConfig(env.Config)
}
