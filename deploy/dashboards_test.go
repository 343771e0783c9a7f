package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"` // a row's panels
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// query is one PromQL expression of a dashboard: a panel target or a
// variable's label_values().
type query struct {
	where string // "dashboard / panel [refId]"
	expr  string
	// label is set for a variable query label_values(expr, label).
	label string
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob("dashboards/*.json")
	if err != nil || len(files) != 3 {
		t.Fatalf("dashboards/*.json: %v, %d files, want 3", err, len(files))
	}
	out := map[string]dashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// dashboardQueries returns every query of every dashboard, failing on a
// panel without a query (other than rows and text panels) or on duplicate
// panel ids.
func dashboardQueries(t *testing.T, ds map[string]dashboard) []query {
	t.Helper()
	var qs []query
	for file, d := range ds {
		ids := map[int]bool{}
		var walk func(ps []panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				if ids[p.ID] {
					t.Errorf("%s: duplicate panel id %d", file, p.ID)
				}
				ids[p.ID] = true
				walk(p.Panels)
				if p.Type == "row" || p.Type == "text" {
					continue
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: panel %q has no query", file, p.Title)
				}
				for _, tg := range p.Targets {
					if strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("%s: panel %q target %s has no expr", file, p.Title, tg.RefID)
					}
					qs = append(qs, query{where: fmt.Sprintf("%s / %s [%s]", d.Title, p.Title, tg.RefID), expr: tg.Expr})
				}
			}
		}
		walk(d.Panels)
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			s, _ := v.Query.(string)
			m := labelValuesRE.FindStringSubmatch(s)
			if m == nil {
				t.Errorf("%s: variable %s: query %q is not label_values(selector, label)", file, v.Name, s)
				continue
			}
			qs = append(qs, query{where: fmt.Sprintf("%s / variable $%s", d.Title, v.Name), expr: m[1], label: m[2]})
		}
	}
	return qs
}

// TestDashboardsTypeCheck wraps each dashboard as a TypeScript constant of
// @grafana/schema's Dashboard type and runs tsc --noEmit --strict over them
// (deploy/dashboards/check, npm ci when node_modules is missing); then
// proves the check fails on a misspelt field.
func TestDashboardsTypeCheck(t *testing.T) {
	npm := requireTool(t, "npm")
	requireTool(t, "node")
	dir := filepath.Join("dashboards", "check")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(name string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	tsc := filepath.Join("node_modules", ".bin", "tsc")
	if _, err := os.Stat(filepath.Join(dir, tsc)); err != nil {
		if out, err := run(npm, "ci", "--no-audit", "--no-fund"); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	gen := filepath.Join(dir, "gen")
	if err := os.RemoveAll(gen); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	write := func(name string, js []byte) {
		ident := strings.NewReplacer("-", "_", ".", "_").Replace(name)
		var b bytes.Buffer
		fmt.Fprintf(&b, "// Generated from deploy/dashboards/%s.json by TestDashboardsTypeCheck: do not edit.\n", name)
		b.WriteString("import type { Dashboard } from '@grafana/schema';\n")
		fmt.Fprintf(&b, "export const %s: Dashboard = ", ident)
		b.Write(bytes.TrimSpace(js))
		b.WriteString(";\n")
		if err := os.WriteFile(filepath.Join(gen, name+".ts"), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		js, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		write(strings.TrimSuffix(filepath.Base(f), ".json"), js)
	}
	if out, err := run(tsc, "--noEmit", "--strict", "-p", "."); err != nil {
		t.Fatalf("tsc --noEmit --strict: %v\n%s", err, out)
	}
	t.Logf("%d dashboards type-check against @grafana/schema", len(files))

	// The check can fail: a misspelt panel field is reported.
	js, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	write("zz-misspelt", bytes.Replace(js, []byte(`"gridPos"`), []byte(`"gridPosition"`), 1))
	out, err := run(tsc, "--noEmit", "--strict", "-p", ".")
	if err == nil || !strings.Contains(out, "gridPosition") {
		t.Errorf("tsc accepted a misspelt field (err %v):\n%s", err, out)
	}
	if err := os.RemoveAll(gen); err != nil {
		t.Fatal(err)
	}
}
