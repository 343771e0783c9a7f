package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inflight-dev/inflight/test/demo/stack"
	"github.com/inflight-dev/inflight/test/testutil"
)

const prometheusBin = "/usr/bin/prometheus"

// startPrometheus runs Debian's prometheus scraping every extproc and
// controller admin port each second; it returns the UI's URL.
func (d *demo) startPrometheus(ctx context.Context) (string, error) {
	if _, err := os.Stat(prometheusBin); err != nil {
		return "", fmt.Errorf("--prometheus needs %s (apt-get install prometheus): %w", prometheusBin, err)
	}
	quote := func(addrs []string) string {
		q := make([]string, len(addrs))
		for i, a := range addrs {
			q[i] = "'" + a + "'"
		}
		return strings.Join(q, ", ")
	}
	var ext, ctl []string
	for _, e := range d.st.Extprocs {
		ext = append(ext, e.Admin)
	}
	for _, c := range d.st.Controllers {
		ctl = append(ctl, c.Admin)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: inflight-extproc
    static_configs:
      - targets: [%s]
  - job_name: inflight-controller
    static_configs:
      - targets: [%s]
`, quote(ext), quote(ctl))
	dir := filepath.Join(d.opt.Dir, "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return "", err
	}
	addr, err := testutil.FreeLoopbackAddr()
	if err != nil {
		return "", err
	}
	p, err := d.st.StartProcess("prometheus", prometheusBin, "--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	if err != nil {
		return "", err
	}
	if err := stack.WaitHTTP(ctx, p, "http://"+addr+"/-/ready", 30*time.Second); err != nil {
		return "", err
	}
	return "http://" + addr, nil
}
