package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/inflight-dev/inflight/scaling/kube"
)

// statusOptions are the flags of `inflightctl status`.
type statusOptions struct {
	Controllers string // comma-separated admin URLs
	Timeout     time.Duration
	Wide        bool
}

func defaultStatusOptions() statusOptions {
	return statusOptions{Controllers: "http://127.0.0.1:9091", Timeout: 3 * time.Second}
}

// AddFlags registers the flags on fs.
func (o *statusOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Controllers, "controller", o.Controllers,
		"controller admin URL(s), comma-separated (e.g. each replica through kubectl port-forward); the leader's view is shown")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of each request")
	fs.BoolVar(&o.Wide, "wide", o.Wide, "also show predicted demand, cold start and the last change")
}

// urls returns the non-empty --controller URLs.
func (o *statusOptions) urls() []string {
	var urls []string
	for _, u := range strings.Split(o.Controllers, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// Validate reports every invalid flag at once.
func (o *statusOptions) Validate() error {
	var errs []error
	if len(o.urls()) == 0 {
		errs = append(errs, fmt.Errorf("--controller=%q: want one or more admin URLs, comma-separated", o.Controllers))
	}
	if o.Timeout <= 0 || o.Timeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--timeout=%v: want > 0 and ≤ 5m", o.Timeout))
	}
	return errors.Join(errs...)
}

// runStatus implements `inflightctl status`: it reads GET /v1/status from
// each --controller URL, takes the leader's view (a follower lists no
// workloads) and prints one row per managed Deployment.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultStatusOptions()
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("status: unexpected argument %q", fs.Arg(0))
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	urls := o.urls()
	hc := &http.Client{Timeout: o.Timeout}
	var (
		chosen *kube.Status
		errs   []error
	)
	for _, u := range urls {
		st, err := fetchStatus(ctx, hc, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if chosen == nil || (st.Leader && !chosen.Leader) {
			chosen = st
		}
	}
	if chosen == nil {
		return fmt.Errorf("status: no controller reachable: %w", errors.Join(errs...))
	}
	for _, err := range errs {
		fmt.Fprintf(stderr, "warning: %v\n", err)
	}
	return writeStatus(stdout, chosen, o.Wide)
}

func fetchStatus(ctx context.Context, hc *http.Client, base string) (*kube.Status, error) {
	url := strings.TrimRight(base, "/") + "/v1/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", base, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("controller %s unreachable (is the admin port forwarded? kubectl -n inflight-system port-forward deploy/inflight-controller 9091): %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("controller %s: GET /v1/status: %s: %s", base, resp.Status, strings.TrimSpace(string(b)))
	}
	var st kube.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("controller %s: decoding /v1/status: %w", base, err)
	}
	if st.Version != kube.StatusVersion {
		return nil, fmt.Errorf("controller %s: status version %q, this inflightctl reads %q", base, st.Version, kube.StatusVersion)
	}
	return &st, nil
}

// writeStatus prints the header line and the table. Ages are relative to
// the status's own tick time, so the output depends only on the document.
func writeStatus(w io.Writer, st *kube.Status, wide bool) error {
	role := "follower"
	if st.Leader {
		role = "leader"
	}
	tick := "no tick yet"
	if !st.Time.IsZero() {
		tick = "last tick " + st.Time.UTC().Format(time.RFC3339)
	}
	partial := ""
	if st.Partial {
		partial = " (partial data: no scale-down)"
	}
	fmt.Fprintf(w, "controller %s (%s), %s, extproc replicas answered %d/%d%s\n",
		st.Identity, role, tick, st.ExtprocAnswered, st.ExtprocEndpoints, partial)
	if !st.Leader {
		fmt.Fprintln(w, "this replica does not lead: it lists no workloads; pass every replica's URL to --controller")
		return nil
	}
	if len(st.Workloads) == 0 {
		fmt.Fprintln(w, "no Deployment carries inflight.dev/target or inflight.dev/slo-wait")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "NAMESPACE\tDEPLOYMENT\tTARGET\tSOURCE\tIN-FLIGHT\tSTABLE\tBURST\tTREND\tDESIRED\tREADY\tREQUESTED\tLAST DECISION"
	if wide {
		head += "\tPREDICTED\tCOLD-START\tLAST CHANGE"
	}
	head += "\tREASON"
	fmt.Fprintln(tw, head)
	for _, ws := range st.Workloads {
		target := "-"
		if ws.Target > 0 {
			target = fmt.Sprintf("%g", ws.Target)
		}
		// SOURCE: where the demand is seen (inbound sidecars, the edge, or
		// both: the sidecars' count plus the edge's held requests).
		row := []string{ws.Namespace, ws.Workload, target, cmp.Or(ws.Source, "-")}
		d := ws.Last
		if d == nil {
			row = append(row, "-", "-", "-", "-", "-", "-", "-", "none yet")
		} else {
			burst := fmt.Sprintf("%.1f", d.PanicDemand)
			if d.Panicking {
				burst += " (panic)"
			}
			inFlight := fmt.Sprintf("%.0f", d.InFlight)
			if d.Held > 0 {
				inFlight += fmt.Sprintf(" (%.0f held)", d.Held)
			}
			row = append(row, inFlight, fmt.Sprintf("%.1f", d.StableDemand), burst,
				fmt.Sprintf("%+.2f/s", d.Trend), fmt.Sprint(d.Desired), fmt.Sprint(d.Ready), requested(d),
				fmt.Sprintf("%s %s ago", d.Direction, age(st.Time, d.Time)))
		}
		if wide {
			if d == nil {
				row = append(row, "-", "-")
			} else {
				row = append(row, fmt.Sprintf("%.1f", d.PredictedDemand), fmt.Sprintf("%.0fs", d.ColdStartSec))
			}
			if c := ws.LastChange; c != nil {
				row = append(row, fmt.Sprintf("%s %d→%d %s ago", c.Direction, c.From, c.Desired, age(st.Time, c.Time)))
			} else {
				row = append(row, "none")
			}
		}
		reason := ""
		if d != nil {
			reason = d.Reason
		}
		row = append(row, reasonOf(ws, reason))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func requested(d *kube.DecisionStatus) string {
	if d.Starting > 0 {
		return fmt.Sprintf("%d (%d starting)", d.Requested, d.Starting)
	}
	return fmt.Sprint(d.Requested)
}

func reasonOf(ws kube.WorkloadStatus, reason string) string {
	if ws.ConfigError != "" {
		reason = "INVALID CONFIG: " + ws.ConfigError + "; " + reason
	}
	if reason == "" {
		return "-"
	}
	return strings.ReplaceAll(reason, "\t", " ")
}

func age(now, t time.Time) string {
	if now.IsZero() || t.IsZero() || t.After(now) {
		return "0s"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}
