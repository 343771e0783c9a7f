package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/testutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// Names of the extproc Service the controllers discover, as in deploy/.
const (
	SystemNamespace = "inflight-system"
	ExtprocService  = "inflight-extproc"
	LeaseName       = "inflight-controller"
)

// Bins are the built binaries.
type Bins struct{ Extproc, Controller, Inflightctl string }

// Build builds the test control plane (cached by build.sh) and the
// binaries into root/.cache/demo/bin, logging to w.
func Build(ctx context.Context, root string, w io.Writer, controlPlane bool) (Bins, error) {
	return BuildInto(ctx, root, filepath.Join(root, ".cache", "demo", "bin"), w, controlPlane)
}

// BuildInto is Build with the binaries written into dir.
func BuildInto(ctx context.Context, root, dir string, w io.Writer, controlPlane bool) (Bins, error) {
	if controlPlane {
		cmd := groupCommand(ctx, filepath.Join(root, "test", "controlplane", "build.sh"))
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, w, w
		if err := cmd.Run(); err != nil {
			return Bins{}, fmt.Errorf("test/controlplane/build.sh: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Bins{}, err
	}
	cmd := groupCommand(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/extproc", "./cmd/controller", "./cmd/inflightctl")
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, w, w
	if err := cmd.Run(); err != nil {
		return Bins{}, fmt.Errorf("go build ./cmd/extproc ./cmd/controller ./cmd/inflightctl: %w", err)
	}
	return Bins{Extproc: filepath.Join(dir, "extproc"), Controller: filepath.Join(dir, "controller"),
		Inflightctl: filepath.Join(dir, "inflightctl")}, nil
}

// groupCommand is a command in its own process group that ctx's end stops
// as a whole (build.sh's go build, go build's compilers): SIGTERM to the
// group, SIGKILL 10 s later.
func groupCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Options configure a Stack.
type Options struct {
	Bins Bins
	// Dir holds the logs and the kubeconfig.
	Dir string
	// Tick, LeaseDuration, RenewDeadline, RetryPeriod are passed to the
	// controllers (zero: their defaults).
	Tick, LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Config, if set, is an already running control plane to use instead
	// of starting one (the e2e test's TestMain).
	Config *rest.Config
	// ExtprocArgs are appended to every extproc's flags (a later flag
	// wins: e.g. --caller-identity mtls and its certificate files).
	ExtprocArgs []string
}

// Stack is the running demo system.
type Stack struct {
	opt        Options
	env        *controlplane.Env
	Config     *rest.Config
	Client     kubernetes.Interface
	Kubeconfig string

	Extprocs    []*Extproc
	Controllers []*Controller

	mu      sync.Mutex
	stopped bool
	procs   []*Proc
}

// Extproc is one running extproc replica.
type Extproc struct {
	*Proc
	GRPC, Admin string // loopback host:port
}

// Controller is one running controller replica.
type Controller struct {
	*Proc
	Identity, Admin string
}

// Start starts the control plane (unless opt.Config is set) and writes a
// kubeconfig for the controller processes.
func Start(opt Options) (*Stack, error) {
	if err := os.MkdirAll(opt.Dir, 0o755); err != nil {
		return nil, err
	}
	s := &Stack{opt: opt, Config: opt.Config}
	if s.Config == nil {
		env, err := controlplane.Start()
		if err != nil {
			return nil, err
		}
		s.env, s.Config = env, env.Config
	}
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.Client = cs
	s.Kubeconfig = filepath.Join(opt.Dir, "kubeconfig")
	if err := WriteKubeconfig(s.Config, s.Kubeconfig); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// WriteKubeconfig writes cfg (server, CA, client certificate or token) as
// a kubeconfig file.
func WriteKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["demo"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["demo"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Token: cfg.BearerToken, Username: cfg.Username, Password: cfg.Password}
	kc.Contexts["demo"] = &clientcmdapi.Context{Cluster: "demo", AuthInfo: "demo"}
	kc.CurrentContext = "demo"
	return clientcmd.WriteToFile(*kc, path)
}

func (s *Stack) track(p *Proc) {
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
}

// endpointAddress is the address extproc replica i is registered under in
// its EndpointSlice. The API server refuses loopback addresses there, so
// the slice holds an address of the documentation range (RFC 5737) that
// nothing ever dials: the controllers run with --snapshot-dial-host
// 127.0.0.1 and connect to the loopback address with the slice's port,
// where the replica's admin port listens. No traffic leaves loopback.
func endpointAddress(i int) string { return fmt.Sprintf("192.0.2.%d", 10+i%200) }

// StartExtproc starts extproc replica i and registers it as an endpoint of
// the extproc Service.
func (s *Stack) StartExtproc(ctx context.Context, i int) (*Extproc, error) {
	grpcAddr, err := testutil.FreeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	admin, err := testutil.FreeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("inflight-extproc-%d", i)
	args := append([]string{"--grpc-listen", grpcAddr, "--admin-listen", admin,
		"--replica-name", name, "--drain-delay", "0s", "--drain-timeout", "2s", "--log-format", "json", "--caller-identity", "trust-attributes"}, s.opt.ExtprocArgs...)
	p, err := StartProc(name, s.opt.Dir, s.opt.Bins.Extproc, args...)
	if err != nil {
		return nil, err
	}
	s.track(p)
	e := &Extproc{Proc: p, GRPC: grpcAddr, Admin: admin}
	if err := WaitHTTP(ctx, p, "http://"+admin+"/readyz", 30*time.Second); err != nil {
		return nil, err
	}
	if err := s.registerExtproc(ctx, name, endpointAddress(i), admin, grpcAddr); err != nil {
		return nil, err
	}
	s.Extprocs = append(s.Extprocs, e)
	return e, nil
}

func (s *Stack) registerExtproc(ctx context.Context, name, host, admin, grpcAddr string) error {
	if err := EnsureNamespace(ctx, s.Client, SystemNamespace); err != nil {
		return err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: ExtprocService, Namespace: SystemNamespace},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": ExtprocService},
			Ports: []corev1.ServicePort{{Name: "grpc", Port: 9002}, {Name: "admin", Port: 9090}}}}
	if _, err := s.Client.CoreV1().Services(SystemNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	_, adminPort, _ := net.SplitHostPort(admin)
	_, grpcPort, _ := net.SplitHostPort(grpcAddr)
	ap, _ := strconv.Atoi(adminPort)
	gp, _ := strconv.Atoi(grpcPort)
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: SystemNamespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: ExtprocService}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: SystemNamespace, Name: name}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("admin"), Port: ptr.To(int32(ap))}, {Name: ptr.To("grpc"), Port: ptr.To(int32(gp))}},
	}
	_, err := s.Client.DiscoveryV1().EndpointSlices(SystemNamespace).Create(ctx, es, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("register %s as an EndpointSlice of %s/%s: %w", name, SystemNamespace, ExtprocService, err)
	}
	return nil
}

// EnsureNamespace creates ns if absent.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// StartController starts controller replica i.
func (s *Stack) StartController(ctx context.Context, i int) (*Controller, error) {
	admin, err := testutil.FreeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("inflight-controller-%d", i)
	args := []string{"--kubeconfig", s.Kubeconfig, "--admin-listen", admin, "--identity", id,
		"--extproc-namespace", SystemNamespace, "--extproc-service", ExtprocService,
		"--lease-namespace", SystemNamespace, "--lease-name", LeaseName, "--log-format", "json",
		"--snapshot-dial-host", "127.0.0.1"}
	dur := func(flag string, d time.Duration) {
		if d > 0 {
			args = append(args, flag, d.String())
		}
	}
	dur("--tick", s.opt.Tick)
	dur("--lease-duration", s.opt.LeaseDuration)
	dur("--renew-deadline", s.opt.RenewDeadline)
	dur("--retry-period", s.opt.RetryPeriod)
	p, err := StartProc(id, s.opt.Dir, s.opt.Bins.Controller, args...)
	if err != nil {
		return nil, err
	}
	s.track(p)
	c := &Controller{Proc: p, Identity: id, Admin: admin}
	if err := WaitHTTP(ctx, p, "http://"+admin+"/healthz", 30*time.Second); err != nil {
		return nil, err
	}
	s.Controllers = append(s.Controllers, c)
	return c, nil
}

// WaitHTTP polls url until it answers 200, the process exits, or the
// timeout passes (bounded: every 100 ms).
func WaitHTTP(ctx context.Context, p *Proc, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	hc := &http.Client{Timeout: time.Second}
	for {
		if resp, err := hc.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not ready within %v (log: %s)", p.Name, url, timeout, p.LogPath)
		case <-p.Exited():
			return fmt.Errorf("%s exited: %v (log: %s)", p.Name, p.Err(), p.LogPath)
		case <-t.C:
		}
	}
}

// Snapshot reads one extproc's /v1/snapshot.
func Snapshot(ctx context.Context, admin string) (extproc.Snapshot, error) {
	var s extproc.Snapshot
	err := GetJSON(ctx, "http://"+admin+"/v1/snapshot", &s)
	return s, err
}

// GetJSON GETs url (1 s timeout) and decodes its JSON body into v.
func GetJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Leader returns the controller that reports leading in /v1/status, or nil.
func (s *Stack) Leader(ctx context.Context) *Controller {
	for _, c := range s.Controllers {
		select {
		case <-c.Exited():
			continue
		default:
		}
		var st struct {
			Leader bool `json:"leader"`
		}
		if GetJSON(ctx, "http://"+c.Admin+"/v1/status", &st) == nil && st.Leader {
			return c
		}
	}
	return nil
}

// Stop stops every process (SIGTERM to its group, SIGKILL after 10 s), in
// reverse start order, then the control plane; it returns what went wrong.
// It is idempotent.
func (s *Stack) Stop() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	procs := append([]*Proc(nil), s.procs...)
	s.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if !p.GroupGone() {
			errs = append(errs, fmt.Errorf("%s: process group %d still has processes", p.Name, p.Pid()))
		}
	}
	if s.env != nil {
		if err := s.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("control plane: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Procs returns the processes started so far.
func (s *Stack) Procs() []*Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Proc(nil), s.procs...)
}

// StartProcess starts another process (e.g. Prometheus) that Stop stops.
func (s *Stack) StartProcess(name, bin string, args ...string) (*Proc, error) {
	p, err := StartProc(name, s.opt.Dir, bin, args...)
	if err != nil {
		return nil, err
	}
	s.track(p)
	return p, nil
}

// Poll calls cond every period until it holds (nil), ctx ends or timeout
// passes (the context's error).
func Poll(ctx context.Context, timeout, period time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// InFlight sums the workload's in-flight count over the extprocs'
// snapshots; ok is false if one did not answer.
func InFlight(ctx context.Context, extprocs []*Extproc, namespace, workload string) (sum int64, ok bool) {
	sum, _, ok = sumTargets(ctx, extprocs, func(t extproc.TargetRecord) bool {
		return t.Namespace == namespace && t.Workload == workload
	})
	return sum, ok
}

// EdgeInFlight sums the edge records (gateway) of a Service over the
// extprocs' snapshots: in flight (held included) and held; ok is false if
// one did not answer.
func EdgeInFlight(ctx context.Context, extprocs []*Extproc, namespace, service string) (inFlight, held int64, ok bool) {
	return sumTargets(ctx, extprocs, func(t extproc.TargetRecord) bool {
		return t.Namespace == namespace && t.Service == service && t.Source == "edge"
	})
}

// sumTargets sums in-flight and held over the snapshots' records that
// match; ok is false if an extproc did not answer.
func sumTargets(ctx context.Context, extprocs []*Extproc, match func(extproc.TargetRecord) bool) (inFlight, held int64, ok bool) {
	ok = true
	for _, e := range extprocs {
		s, err := Snapshot(ctx, e.Admin)
		if err != nil {
			ok = false
			continue
		}
		for _, t := range s.Targets {
			if match(t) {
				inFlight += t.InFlight
				held += t.Held
			}
		}
	}
	return inFlight, held, ok
}
