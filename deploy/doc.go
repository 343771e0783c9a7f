// Package deploy holds inflight's install manifests (a kustomize tree:
// base/, monitoring/, dashboards/, docker/) and no code: its tests render
// the tree with kubectl kustomize and check it against the real thing — a
// server-side dry-run apply on the test kube-apiserver, strict decoding of
// the monitoring objects into prometheus-operator's types, promtool on the
// alert rules, tsc with @grafana/schema on the dashboards, and every
// dashboard query evaluated by a real Prometheus that scraped the real
// binaries under load.
//
// Tests that need kubectl, promtool, prometheus or npm skip when the tool is
// missing, and fail instead when INFLIGHT_REQUIRE_CONTROLPLANE=1 (as in CI).
package deploy
