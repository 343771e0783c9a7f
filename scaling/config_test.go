package scaling

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseAnnotationsDefaults(t *testing.T) {
	cfg, err := ParseAnnotations(map[string]string{"inflight.dev/target": "4", "app": "x"})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig(4)
	if cfg != want {
		t.Fatalf("got %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestParseAnnotationsValues(t *testing.T) {
	cfg, err := ParseAnnotations(map[string]string{
		"inflight.dev/target":              " 2.5 ",
		"inflight.dev/min-replicas":        "0",
		"inflight.dev/max-replicas":        "40",
		"inflight.dev/window":              "2m",
		"inflight.dev/panic-window":        "10",
		"inflight.dev/panic-threshold":     "3",
		"inflight.dev/scale-down-delay":    "0s",
		"inflight.dev/max-scale-up-rate":   "4",
		"inflight.dev/max-scale-down-rate": "1.5",
		"inflight.dev/cold-start":          "90s",
		"inflight.dev/max-queue":           "16",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Target: 2.5, MinReplicas: 0, MaxReplicas: 40, Window: 2 * time.Minute,
		PanicWindow: 10 * time.Second, PanicThreshold: 3, ScaleDownDelay: 0, MaxScaleUpRate: 4,
		MaxScaleDownRate: 1.5, ColdStart: 90 * time.Second, MaxQueue: 16, HoldTimeout: DefaultHoldTimeout,
		ForecastPeriod: DefaultForecastPeriod}
	if cfg != want {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	cfg, err = ParseAnnotations(map[string]string{"inflight.dev/target": "1",
		"inflight.dev/cold-start": "learned", "inflight.dev/max-queue": "off"})
	if err != nil || cfg.ColdStart != 0 || cfg.MaxQueue != 0 || cfg.ScaleDownDelay != ScaleDownDelayColdStart {
		t.Fatalf("learned/off/default delay: %+v %v", cfg, err)
	}
	cfg, err = ParseAnnotations(map[string]string{"inflight.dev/target": "1", "inflight.dev/scale-down-delay": "cold-start"})
	if err != nil || cfg.ScaleDownDelay != ScaleDownDelayColdStart {
		t.Fatalf("scale-down-delay cold-start: %+v %v", cfg, err)
	}
}

// TestParseAnnotationsErrors covers every validation error: each names the
// annotation, echoes the value and states the allowed range.
func TestParseAnnotationsErrors(t *testing.T) {
	cases := []struct {
		name, ann, value string
		allowed          string // a fragment of the allowed range
	}{
		{"target missing", "target", "", "or inflight.dev/slo-wait"},
		{"target zero", "target", "0", "between 0.01 and 1e6"},
		{"target negative", "target", "-1", "between 0.01 and 1e6"},
		{"target NaN", "target", "NaN", "between 0.01 and 1e6"},
		{"target Inf", "target", "+Inf", "and 1e6"},
		{"target below the floor", "target", "1e-300", "between 0.01"},
		{"target word", "target", "four", "between 0.01 and 1e6"},
		{"min-replicas negative", "min-replicas", "-1", "between 0 and 100000"},
		{"min-replicas float", "min-replicas", "1.5", "integer"},
		{"max-replicas zero", "max-replicas", "0", "between 1 and 100000"},
		{"max-replicas huge", "max-replicas", "9999999999", "between 1 and 100000"},
		{"window short", "window", "1s", "between 6s and 1h"},
		{"window long", "window", "2h", "between 6s and 1h"},
		{"window junk", "window", "soon", "duration"},
		{"panic-window zero", "panic-window", "0s", "between 1s"},
		{"panic-threshold low", "panic-threshold", "1", "between 1.1 and 10"},
		{"panic-threshold high", "panic-threshold", "11", "between 1.1 and 10"},
		{"scale-down-delay negative", "scale-down-delay", "-5m", `"cold-start" or a duration between 0s and 1h`},
		{"max-scale-up-rate one", "max-scale-up-rate", "1", "> 1"},
		{"max-scale-up-rate high", "max-scale-up-rate", "5000", "≤ 1000"},
		{"max-scale-down-rate low", "max-scale-down-rate", "0.5", "> 1"},
		{"cold-start negative", "cold-start", "-1s", "between 0s and 1h"},
		{"cold-start junk", "cold-start", "fast", "duration"},
		{"max-queue zero", "max-queue", "0", `"off" or a number > 0`},
		{"slo-wait zero", "slo-wait", "0s", `"off" or a duration between 100ms and 1h`},
		{"slo-wait junk", "slo-wait", "fast", "duration"},
		{"concurrency zero", "concurrency", "0", `"learned" or an integer between 1 and 100000`},
		{"forecast-period short", "forecast-period", "1m", `"off" or a duration between 10m and 168h`},
		{"hold-timeout short", "hold-timeout", "500ms", "between 1s and 59m"},
		{"hold-timeout long", "hold-timeout", "1h", "between 1s and 59m"},
		{"hold-timeout off is not a word", "hold-timeout", "off", "between 1s and 59m"},
		{"unknown name", "max-replica", "5", "one of inflight.dev/{target,"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ann := map[string]string{"inflight.dev/target": "4"}
			if c.ann == "target" {
				delete(ann, "inflight.dev/target")
			}
			if c.value != "" || c.ann != "target" {
				ann["inflight.dev/"+c.ann] = c.value
			}
			_, err := ParseAnnotations(ann)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %v", err)
			}
			if len(ce.Fields) != 1 {
				t.Fatalf("want exactly one field error, got %v", ce)
			}
			fe := ce.Fields[0]
			if fe.Annotation != "inflight.dev/"+c.ann || fe.Value != c.value || !strings.Contains(fe.Allowed, c.allowed) {
				t.Fatalf("got %+v, want annotation %s value %q allowed ~%q", fe, c.ann, c.value, c.allowed)
			}
			msg := err.Error()
			if !strings.Contains(msg, fe.Annotation) || !strings.Contains(msg, c.allowed) {
				t.Fatalf("message %q lacks the annotation or the range", msg)
			}
		})
	}
}

func TestParseAnnotationsCrossErrors(t *testing.T) {
	cases := []struct {
		name string
		ann  map[string]string
		want string // annotation named
	}{
		{"min above max", map[string]string{"inflight.dev/min-replicas": "5", "inflight.dev/max-replicas": "3"}, "inflight.dev/min-replicas"},
		{"panic window above window", map[string]string{"inflight.dev/window": "10s", "inflight.dev/panic-window": "20s"}, "inflight.dev/panic-window"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.ann["inflight.dev/target"] = "1"
			_, err := ParseAnnotations(c.ann)
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Fields) != 1 || ce.Fields[0].Annotation != c.want {
				t.Fatalf("got %v, want one error naming %s", err, c.want)
			}
		})
	}
}

func TestParseAnnotationsReportsAllErrors(t *testing.T) {
	_, err := ParseAnnotations(map[string]string{
		"inflight.dev/target":       "x",
		"inflight.dev/window":       "1ms",
		"inflight.dev/max-replicas": "-2",
	})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("want *ConfigError, got %v", err)
	}
	var got []string
	for _, f := range ce.Fields {
		got = append(got, f.Annotation)
	}
	want := "inflight.dev/max-replicas,inflight.dev/target,inflight.dev/window"
	if strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %s (sorted, all of them)", got, want)
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string // annotation named, "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"target", func(c *Config) { c.Target = 0 }, "inflight.dev/target"},
		{"min", func(c *Config) { c.MinReplicas = -1 }, "inflight.dev/min-replicas"},
		{"max", func(c *Config) { c.MaxReplicas = 0 }, "inflight.dev/max-replicas"},
		{"window", func(c *Config) { c.Window = time.Second }, "inflight.dev/window"},
		{"panic-window", func(c *Config) { c.PanicWindow = 0 }, "inflight.dev/panic-window"},
		{"threshold", func(c *Config) { c.PanicThreshold = 1 }, "inflight.dev/panic-threshold"},
		{"delay", func(c *Config) { c.ScaleDownDelay = -time.Second }, "inflight.dev/scale-down-delay"},
		{"delay follows the cold start", func(c *Config) { c.ScaleDownDelay = ScaleDownDelayColdStart }, ""},
		{"up rate", func(c *Config) { c.MaxScaleUpRate = 1 }, "inflight.dev/max-scale-up-rate"},
		{"down rate", func(c *Config) { c.MaxScaleDownRate = 0 }, "inflight.dev/max-scale-down-rate"},
		{"cold start", func(c *Config) { c.ColdStart = 2 * time.Hour }, "inflight.dev/cold-start"},
		{"max queue", func(c *Config) { c.MaxQueue = -1 }, "inflight.dev/max-queue"},
		{"min > max", func(c *Config) { c.MinReplicas = 11 }, "inflight.dev/min-replicas"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig(4)
			c.mutate(&cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Fields) != 1 || ce.Fields[0].Annotation != c.want {
				t.Fatalf("got %v, want one error naming %s", err, c.want)
			}
		})
	}
}

func FuzzParseAnnotations(f *testing.F) {
	f.Add("4", "1", "10", "60s", "6s", "2", "5m", "10", "2", "", "off", "")
	f.Add("0.5", "0", "3", "2m", "10s", "1.5", "0", "1000", "1.01", "90s", "8", "x")
	f.Add("-1", "a", "", "1h1s", "NaN", "Inf", "-0", "1e309", "0x10", "learned", "0", "target")
	f.Fuzz(func(t *testing.T, target, minR, maxR, window, panicW, thr, delay, up, down, cold, queue, extra string) {
		ann := map[string]string{}
		set := func(k, v string) {
			if v != "" {
				ann[AnnotationPrefix+k] = v
			}
		}
		set(AnnTarget, target)
		set(AnnMinReplicas, minR)
		set(AnnMaxReplicas, maxR)
		set(AnnWindow, window)
		set(AnnPanicWindow, panicW)
		set(AnnPanicThreshold, thr)
		set(AnnScaleDownDelay, delay)
		set(AnnMaxScaleUpRate, up)
		set(AnnMaxScaleDownRate, down)
		set(AnnColdStart, cold)
		set(AnnMaxQueue, queue)
		set(extra, "1")
		cfg, err := ParseAnnotations(ann)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("parsed config does not validate: %v (%+v)", verr, cfg)
			}
			return
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || len(ce.Fields) == 0 {
			t.Fatalf("error is not a non-empty *ConfigError: %v", err)
		}
		for _, fe := range ce.Fields {
			if !strings.HasPrefix(fe.Annotation, AnnotationPrefix) || fe.Allowed == "" {
				t.Fatalf("field error without annotation or range: %+v", fe)
			}
			if !strings.Contains(err.Error(), fe.Annotation) {
				t.Fatalf("message %q lacks %s", err, fe.Annotation)
			}
		}
	})
}

func TestParseAnnotationsSLOWait(t *testing.T) {
	cfg, err := ParseAnnotations(map[string]string{"inflight.dev/slo-wait": "10s", "inflight.dev/concurrency": "8",
		"inflight.dev/forecast-period": "off"})
	if err != nil {
		t.Fatalf("slo-wait alone must enable inflight: %v", err)
	}
	if cfg.Target != 0 || cfg.SLOWait != 10*time.Second || cfg.Concurrency != 8 || cfg.ForecastPeriod != 0 {
		t.Fatalf("got %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("slo-wait alone does not validate: %v", err)
	}
	cfg, err = ParseAnnotations(map[string]string{"inflight.dev/target": "4"})
	if err != nil || cfg.ForecastPeriod != DefaultForecastPeriod || cfg.SLOWait != 0 || cfg.Concurrency != 0 {
		t.Fatalf("defaults of the new rows: %+v %v", cfg, err)
	}
}

func TestHoldTimeout(t *testing.T) {
	cfg, err := ParseAnnotations(map[string]string{"inflight.dev/target": "4", "inflight.dev/hold-timeout": "90s"})
	if err != nil || cfg.HoldTimeout != 90*time.Second {
		t.Fatalf("got %+v %v", cfg, err)
	}
	if cfg, err := ParseAnnotations(map[string]string{"inflight.dev/target": "0.01"}); err != nil || cfg.Target != MinTarget || cfg.HoldTimeout != DefaultHoldTimeout {
		t.Fatalf("the floor itself is allowed, hold-timeout defaults: %+v %v", cfg, err)
	}
}

// A Deployment with inflight.dev/ annotations but neither target nor
// slo-wait (a typo of the required key) is an error that names the typo
// and what it probably meant, so the controller can warn instead of
// silently ignoring it.
func TestTypoOfTheRequiredKey(t *testing.T) {
	ann := map[string]string{"inflight.dev/targt": "4", "inflight.dev/max-replicas": "5", "app": "x"}
	if !HasAnnotations(ann) || HasAnnotations(map[string]string{"app": "x", "inflight.dev": "y"}) {
		t.Fatal("HasAnnotations")
	}
	_, err := ParseAnnotations(ann)
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Fields) != 2 {
		t.Fatalf("want two errors (the typo, the missing target), got %v", err)
	}
	if ce.Fields[0].Annotation != "inflight.dev/target" || ce.Fields[0].Value != "" {
		t.Errorf("first error %+v, want the missing target", ce.Fields[0])
	}
	if f := ce.Fields[1]; f.Annotation != "inflight.dev/targt" || !strings.Contains(f.Allowed, "inflight.dev/target (a typo?)") {
		t.Errorf("second error %+v, want the typo with its probable meaning", f)
	}
	// Far from every name: no guess, only the list.
	_, err = ParseAnnotations(map[string]string{"inflight.dev/target": "4", "inflight.dev/zzzzzzzzzz": "1"})
	if !errors.As(err, &ce) || strings.Contains(ce.Fields[0].Allowed, "typo") || !strings.Contains(ce.Fields[0].Allowed, "one of") {
		t.Errorf("got %v", err)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"target", "target", 0}, {"targt", "target", 1}, {"taget", "target", 1}, {"window", "windwo", 2}, {"abc", "", 3}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

// TestTableDrivesEverything: every row parses its default, and a value
// just outside its range fails both ParseAnnotations and Validate with the
// same allowed text.
func TestTableDrivesEverything(t *testing.T) {
	for i := range annotationTable {
		a := &annotationTable[i]
		t.Run(a.name, func(t *testing.T) {
			if a.def != "" {
				v, ok := a.parse(a.def)
				if !ok || v != a.defValue {
					t.Fatalf("default %q parses to %v ok=%v, want %v", a.def, v, ok, a.defValue)
				}
			}
			over := a.hi * 2
			written := fmtNum(over)
			if a.kind == kindDuration {
				written = FormatDuration(secs(over))
			}
			ann := map[string]string{"inflight.dev/target": "4", AnnotationPrefix + a.name: written}
			_, perr := ParseAnnotations(ann)
			cfg := DefaultConfig(4)
			a.set(&cfg, over)
			verr := cfg.Validate()
			var pe, ve *ConfigError
			if !errors.As(perr, &pe) || !errors.As(verr, &ve) || len(pe.Fields) != 1 || len(ve.Fields) != 1 {
				t.Fatalf("over the range: parse %v, validate %v", perr, verr)
			}
			if pe.Fields[0].Allowed != ve.Fields[0].Allowed {
				t.Fatalf("parse says %q, validate %q", pe.Fields[0].Allowed, ve.Fields[0].Allowed)
			}
		})
	}
}

// TestREADMEAnnotationTable checks README.md's annotation table against
// the table in code. To refresh it, paste AnnotationsMarkdown()'s output.
func TestREADMEAnnotationTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	_, after, ok := strings.Cut(readme, "### Annotations")
	if !ok {
		t.Fatal(`README.md has no "### Annotations" section`)
	}
	start := strings.Index(after, "| annotation |")
	if start < 0 {
		t.Fatal("README.md's annotation section has no table")
	}
	tbl := after[start:]
	if end := strings.Index(tbl, "\n\n"); end >= 0 {
		tbl = tbl[:end+1]
	}
	if want := AnnotationsMarkdown(); tbl != want {
		t.Fatalf("README.md's annotation table differs from the code's; want:\n%s\ngot:\n%s", want, tbl)
	}
}

// Enabled is what the controller manages: target or slo-wait, with or
// without the other annotations; other inflight.dev/ keys alone are not.
func TestEnabled(t *testing.T) {
	for _, c := range []struct {
		ann  map[string]string
		want bool
	}{
		{map[string]string{"inflight.dev/target": "4"}, true},
		{map[string]string{"inflight.dev/slo-wait": "10s", "inflight.dev/concurrency": "8"}, true},
		{map[string]string{"inflight.dev/targt": "4", "inflight.dev/max-replicas": "8"}, false},
		{map[string]string{"other.io/target": "4"}, false},
		{nil, false},
	} {
		if got := Enabled(c.ann); got != c.want {
			t.Errorf("Enabled(%v) = %v, want %v", c.ann, got, c.want)
		}
		// Whatever parses is enabled, and nothing enabled parses.
		if _, err := ParseAnnotations(c.ann); c.want && err != nil || !c.want && HasAnnotations(c.ann) && err == nil {
			t.Errorf("%v: enabled %v but ParseAnnotations: %v", c.ann, c.want, err)
		}
	}
}
