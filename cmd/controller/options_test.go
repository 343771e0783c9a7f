package main

import (
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/inflight-dev/inflight/scaling/kube"
)

func TestDefaultsValidate(t *testing.T) {
	o := DefaultOptions()
	o.Identity = "controller-0"
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

// Each flag is checked once, by the option that declares it: what passes
// flag checking starts (the --fetch-timeout bound used to differ between
// the binary's check and the controller's).
func TestFlagCheckIsTheStartupCheck(t *testing.T) {
	o := DefaultOptions()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--identity=x", "--fetch-timeout=10s", "--tick=1s"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("--fetch-timeout=10s --tick=1s: %v", err)
	}
	if _, err := kube.New(fake.NewClientset(), o.kube(), nil, kube.NewMetrics(prometheus.NewRegistry())); err != nil {
		t.Fatalf("flags passed Validate but the controller refused them: %v", err)
	}
}

// Every invalid flag is reported at once, one line each.
func TestValidateReportsEveryError(t *testing.T) {
	o := DefaultOptions()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--tick=1ms", "--write-workers=0", "--log-level=loud", "--kube-burst=0", "--identity="}); err != nil {
		t.Fatal(err)
	}
	err := o.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, f := range []string{"--tick=", "--write-workers=", "--log-level=", "--kube-burst=", "--identity=", "--fetch-timeout="} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error does not name %s:\n%v", f, err)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != 6 {
		t.Errorf("%d error lines, want 6:\n%v", n, err)
	}
}

func TestValidateNamesFlagValueAndRange(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--tick=1ms"}, []string{"--tick=1ms", "10ms to 1m"}},
		{[]string{"--fetch-timeout=20s"}, []string{"--fetch-timeout=20s", "≤ 10 × --tick"}},
		{[]string{"--expire=100ms"}, []string{"--expire=100ms", "--tick (1s) to 10m"}},
		{[]string{"--lease-duration=5s"}, []string{"--lease-duration=5s", "> --renew-deadline (10s)"}},
		{[]string{"--write-workers=0"}, []string{"--write-workers=0", "1 to 64"}},
		{[]string{"--log-format=xml"}, []string{`--log-format="xml"`, "json or console"}},
		{[]string{"--admin-listen=9090"}, []string{`--admin-listen="9090"`, "host:port"}},
		{[]string{"--extproc-service="}, []string{`--extproc-service=""`, "non-empty"}},
		{[]string{"--snapshot-dial-host=10.0.0.1"}, []string{`--snapshot-dial-host="10.0.0.1"`, "loopback IP"}},
		{[]string{"--snapshot-dial-host=localhost"}, []string{`--snapshot-dial-host="localhost"`, "loopback IP"}},
	}
	for _, c := range cases {
		o := DefaultOptions()
		o.Identity = "x"
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if err == nil {
			t.Errorf("%v: no error", c.args)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", c.args, err, w)
			}
		}
	}
}

func TestFlagsReachTheController(t *testing.T) {
	o := DefaultOptions()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--tick=250ms", "--identity=c-1", "--extproc-service=ep", "--lease-name=l"}); err != nil {
		t.Fatal(err)
	}
	k := o.kube()
	if k.Tick != 250*time.Millisecond || k.Identity != "c-1" || k.ExtprocService != "ep" || k.LeaseName != "l" {
		t.Errorf("kube options = %+v", k)
	}
}

// TestSnapshotDialHostConnectsToLoopback checks that the development
// override really connects to the loopback host whatever address the
// request names (a documentation-range address that is never dialled).
func TestSnapshotDialHostConnectsToLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("here")) }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	c := dialHostClient("127.0.0.1", 5*time.Second)
	resp, err := c.Get("http://192.0.2.10:" + port + "/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "here" {
		t.Fatalf("got %q", b)
	}
	o := DefaultOptions()
	o.SnapshotDialHost = "127.0.0.1"
	if o.kube().SnapshotClient == nil {
		t.Fatal("--snapshot-dial-host does not reach the controller's snapshot client")
	}
}
