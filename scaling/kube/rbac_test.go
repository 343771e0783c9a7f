package kube

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/test/controlplane"
)

// access is one API request as RBAC sees it.
type access struct{ verb, group, resource string }

func (a access) String() string {
	g := a.group
	if g == "" {
		g = "core"
	}
	return a.verb + " " + g + "/" + a.resource
}

// audit records every request the controller makes and every denial.
type audit struct {
	mu     sync.Mutex
	seen   map[access]int
	denied []string
	rt     http.RoundTripper
}

func (a *audit) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.rt.RoundTrip(req)
	acc, ok := parseAccess(req)
	a.mu.Lock()
	defer a.mu.Unlock()
	if ok {
		a.seen[acc]++
	}
	if err == nil && resp.StatusCode == http.StatusForbidden {
		a.denied = append(a.denied, fmt.Sprintf("%s %s → 403", req.Method, req.URL.Path))
	}
	return resp, err
}

// parseAccess maps a request to (verb, group, resource[/subresource]).
func parseAccess(req *http.Request) (access, bool) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	var group string
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		group, parts = parts[1], parts[3:]
	default:
		return access{}, false
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	if len(parts) == 0 {
		return access{}, false
	}
	res := parts[0]
	named := len(parts) >= 2
	if len(parts) >= 3 {
		res += "/" + parts[2]
	}
	verb := ""
	switch req.Method {
	case http.MethodGet:
		switch {
		case named:
			verb = "get"
		case req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1":
			verb = "watch"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	}
	return access{verb, group, res}, true
}

// applyRBAC creates every object of deploy/base/controller-rbac.yaml and
// returns the accesses it grants.
func applyRBAC(t *testing.T, e *env) map[access]bool {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "base", "controller-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	granted := map[access]bool{}
	for _, doc := range strings.Split(string(b), "\n---") {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(js)) == "null" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(js, nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v", js, err)
		}
		ctx := e.ctx()
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = e.cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = e.cs.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			grant(granted, o.Rules)
		case *rbacv1.ClusterRoleBinding:
			_, err = e.cs.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = e.cs.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			grant(granted, o.Rules)
		case *rbacv1.RoleBinding:
			_, err = e.cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("unexpected object %T in controller-rbac.yaml", obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	return granted
}

func grant(m map[access]bool, rules []rbacv1.PolicyRule) {
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					m[access{v, g, res}] = true
				}
			}
		}
	}
}

// The controller runs under the shipped ServiceAccount and roles through
// impersonation: nothing it does may be denied, and every granted verb must
// be one it used (least privilege).
func TestRunsUnderShippedRBAC(t *testing.T) {
	e := newEnv(t)
	// The shipped install lives in inflight-system.
	e.sysNS = "inflight-system"
	e.namespace(e.sysNS)
	granted := applyRBAC(t, e)

	e.deployment("llama", fastAnn(), 1)
	e.kubelet("llama")
	a := e.replica("rbac-a")

	cfg := rest.CopyConfig(e.cfg)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:inflight-system:inflight-controller",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:inflight-system", "system:authenticated"},
	}
	au := &audit{seen: map[access]int{}}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { au.rt = rt; return au })

	// Denied verbs really are denied for this identity.
	sa, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoreV1().Secrets(e.ns).List(e.ctx(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: err = %v, want Forbidden", err)
	}
	if err := sa.AppsV1().Deployments(e.ns).Delete(e.ctx(), "llama", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete deployment: err = %v, want Forbidden", err)
	}
	au.mu.Lock()
	au.seen, au.denied = map[access]int{}, nil
	au.mu.Unlock()

	o := e.fastOptions("rbac-1")
	o.LeaseNamespace, o.LeaseName = "inflight-system", "inflight-controller"
	o.Namespace = "" // as shipped: every namespace
	// A fresh Lease, so that creating it is part of the run.
	leases := e.cs.CoordinationV1().Leases(o.LeaseNamespace)
	e.remove(leases.Delete, o.LeaseName)
	e.t.Cleanup(func() { e.remove(leases.Delete, o.LeaseName) })
	r := e.start(cfg, o, nil)
	a.SetInFlight(e.ns, "llama", "llama-1", 3, time.Second)
	eventually(t, 30*time.Second, "scale-up to 3 under the ServiceAccount", func() bool { return e.replicas("llama") == 3 })

	// The same invalid set twice makes the recorder aggregate (patch).
	for i := 0; i < 2; i++ {
		e.annotate("llama", fastAnn("inflight.dev/target", "-1"))
		eventually(t, 30*time.Second, "Warning Event", func() bool {
			ev := findEvent(e.events("llama"), ReasonInvalidConfig)
			return ev != nil && ev.Count >= int32(i+1)
		})
		e.annotate("llama", fastAnn())
		eventually(t, 30*time.Second, "valid again", func() bool {
			w := r.workload(e.ns, "llama")
			return w != nil && w.ConfigError == ""
		})
	}
	// Let the lease be renewed at least once.
	eventually(t, 30*time.Second, "a lease renewal", func() bool {
		au.mu.Lock()
		defer au.mu.Unlock()
		return au.seen[access{"update", "coordination.k8s.io", "leases"}] > 0
	})
	r.stop(t)

	au.mu.Lock()
	defer au.mu.Unlock()
	if len(au.denied) > 0 {
		t.Errorf("the controller was denied under the shipped RBAC:\n%s", strings.Join(au.denied, "\n"))
	}
	var unused, ungranted []string
	for g := range granted {
		// client-go streams an informer's initial list over its watch
		// (WatchListClient) and falls back to LIST when a server refuses;
		// list is granted for that fallback and counts as used with watch.
		if g.verb == "list" && au.seen[access{"watch", g.group, g.resource}] > 0 {
			continue
		}
		if au.seen[g] == 0 {
			unused = append(unused, g.String())
		}
	}
	for s := range au.seen {
		if !granted[s] {
			ungranted = append(ungranted, s.String())
		}
	}
	sort.Strings(unused)
	sort.Strings(ungranted)
	if len(unused) > 0 {
		t.Errorf("granted but never used (not least privilege): %v", unused)
	}
	if len(ungranted) > 0 {
		t.Errorf("used but not granted: %v", ungranted)
	}
	t.Logf("accesses: %v", au.seen)
}
