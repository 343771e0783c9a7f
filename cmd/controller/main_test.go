package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/inflight-dev/inflight/scaling/kube"
)

func TestAdminEndpoints(t *testing.T) {
	o := DefaultOptions()
	o.Identity = "c-0"
	reg := prometheus.NewRegistry()
	ctrl, err := kube.New(fake.NewClientset(), o.kube(), nil, kube.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(adminHandler(ctrl, reg))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the caches synced = %d %q, want 503", code, body)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "inflight_controller_is_leader 0") {
		t.Errorf("/metrics = %d, missing inflight_controller_is_leader 0:\n%s", code, body)
	}
	code, body = get("/v1/status")
	var st kube.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 {
		t.Fatalf("/v1/status = %d %q: %v", code, body, err)
	}
	if st.Version != kube.StatusVersion || st.Identity != "c-0" || st.Leader || st.Workloads == nil {
		t.Errorf("status = %+v", st)
	}
}
