package scaling

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AnnotationPrefix starts every annotation this package reads.
const AnnotationPrefix = "inflight.dev/"

// Annotation names (without the prefix), as in DESIGN.md § Per-service configuration.
const (
	AnnTarget           = "target"
	AnnMinReplicas      = "min-replicas"
	AnnMaxReplicas      = "max-replicas"
	AnnWindow           = "window"
	AnnPanicWindow      = "panic-window"
	AnnPanicThreshold   = "panic-threshold"
	AnnScaleDownDelay   = "scale-down-delay"
	AnnMaxScaleUpRate   = "max-scale-up-rate"
	AnnMaxScaleDownRate = "max-scale-down-rate"
	AnnColdStart        = "cold-start"
	AnnMaxQueue         = "max-queue"
)

// Defaults of the annotation table. Target has none: it is required.
const (
	DefaultMinReplicas      = 1
	DefaultMaxReplicas      = 10
	DefaultWindow           = 60 * time.Second
	DefaultPanicWindow      = 6 * time.Second
	DefaultPanicThreshold   = 2.0
	DefaultScaleDownDelay   = ScaleDownDelayColdStart
	DefaultMaxScaleUpRate   = 10.0
	DefaultMaxScaleDownRate = 2.0
	// DefaultColdStartLead is the lead time used when neither the
	// cold-start annotation nor a learned value is known: two minutes, the
	// order of loading a model of several GB onto a GPU.
	DefaultColdStartLead = 120 * time.Second
)

// ScaleDownDelayColdStart is the ScaleDownDelay that follows the cold
// start (Config.ColdStart, else the learned one, else
// DefaultColdStartLead): the ski-rental break-even. Holding an idle replica
// for one cold start and then releasing it never costs more than twice
// what knowing the future would have (pay for the idle time, or for the
// GPU time of a start-up), whatever the load does next.
const ScaleDownDelayColdStart time.Duration = -1

// Allowed ranges. They are wide on purpose: they reject nonsense (negative,
// NaN, a window of a millisecond), not unusual but legitimate settings.
const (
	maxTarget      = 1e6
	maxReplicasCap = 100000
	minWindow      = 6 * time.Second
	maxWindow      = time.Hour
	minPanicWindow = time.Second
	minThreshold   = 1.1
	maxThreshold   = 10.0
	maxDelay       = time.Hour
	minRate        = 1.0 // exclusive
	maxRate        = 1000.0
	maxColdStart   = time.Hour
	maxQueueCap    = 1e6
)

// Config is the validated per-workload configuration. Build it with
// ParseAnnotations (or DefaultConfig and Validate); a Config that failed
// validation must never be used to scale.
type Config struct {
	// Target is the number of requests in flight per replica to aim for.
	Target float64
	// MinReplicas and MaxReplicas bound the decision; MinReplicas 0 allows
	// scale to zero.
	MinReplicas, MaxReplicas int32
	// Window is the stable averaging window; PanicWindow the burst window.
	Window, PanicWindow time.Duration
	// PanicThreshold: panic when short-window demand ≥ threshold × ready capacity.
	PanicThreshold float64
	// ScaleDownDelay: no scale-down until demand has stayed lower this long.
	// ScaleDownDelayColdStart (the default; annotation value "cold-start")
	// means one cold-start lead: keeping an idle replica longer than it
	// takes to bring one back costs more than bringing it back would.
	ScaleDownDelay time.Duration
	// MaxScaleUpRate caps one decision at ceil(rate × current) replicas;
	// MaxScaleDownRate floors it at floor(current / rate).
	MaxScaleUpRate, MaxScaleDownRate float64
	// ColdStart is the expected time from a scale-up to a ready replica;
	// 0 means "learn it" (Observation.ColdStart, else DefaultColdStartLead).
	ColdStart time.Duration
	// MaxQueue is the per-replica in-flight beyond which the extproc sheds
	// load (control profile); 0 means off. The policy does not use it.
	MaxQueue float64
}

// DefaultConfig returns the defaults of the annotation table with the given target.
func DefaultConfig(target float64) Config {
	return Config{
		Target:           target,
		MinReplicas:      DefaultMinReplicas,
		MaxReplicas:      DefaultMaxReplicas,
		Window:           DefaultWindow,
		PanicWindow:      DefaultPanicWindow,
		PanicThreshold:   DefaultPanicThreshold,
		ScaleDownDelay:   DefaultScaleDownDelay,
		MaxScaleUpRate:   DefaultMaxScaleUpRate,
		MaxScaleDownRate: DefaultMaxScaleDownRate,
	}
}

// FieldError is one invalid annotation: its full name, the value as
// written, and what is allowed.
type FieldError struct {
	Annotation string // full name, with the prefix
	Value      string // as written ("" when missing)
	Allowed    string // e.g. "a duration between 6s and 1h0m0s"
}

func (e FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: missing; want %s", e.Annotation, e.Allowed)
	}
	return fmt.Sprintf("%s: %q is invalid; want %s", e.Annotation, e.Value, e.Allowed)
}

// ConfigError lists every invalid annotation of one Deployment, sorted by
// annotation name. Its Error() is one line, fit for a Kubernetes Event.
type ConfigError struct {
	Fields []FieldError
}

func (e *ConfigError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid inflight configuration: " + strings.Join(parts, "; ")
}

// ParseAnnotations reads the inflight.dev/ annotations of a Deployment and
// returns the configuration with defaults applied. Annotations without the
// prefix are ignored; an unknown name under the prefix is an error (it is
// almost always a typo of a known one). On error the returned Config is the
// zero value and err is a *ConfigError naming every invalid annotation.
func ParseAnnotations(ann map[string]string) (Config, error) {
	p := parser{cfg: DefaultConfig(0)}
	known := map[string]bool{}
	for _, n := range annotationNames {
		known[n] = true
	}
	for k, v := range ann {
		name, ok := strings.CutPrefix(k, AnnotationPrefix)
		if !ok {
			continue
		}
		if !known[name] {
			p.fail(name, v, "one of "+AnnotationPrefix+"{"+strings.Join(annotationNames, ",")+"}")
		}
	}
	get := func(name string) (string, bool) {
		v, ok := ann[AnnotationPrefix+name]
		return strings.TrimSpace(v), ok
	}
	if v, ok := get(AnnTarget); !ok {
		p.fail(AnnTarget, "", targetRange)
	} else {
		p.cfg.Target = p.float(AnnTarget, v, 0, false, maxTarget, targetRange)
	}
	if v, ok := get(AnnMinReplicas); ok {
		p.cfg.MinReplicas = p.int(AnnMinReplicas, v, 0, maxReplicasCap)
	}
	if v, ok := get(AnnMaxReplicas); ok {
		p.cfg.MaxReplicas = p.int(AnnMaxReplicas, v, 1, maxReplicasCap)
	}
	if v, ok := get(AnnWindow); ok {
		p.cfg.Window = p.duration(AnnWindow, v, minWindow, maxWindow)
	}
	if v, ok := get(AnnPanicWindow); ok {
		p.cfg.PanicWindow = p.duration(AnnPanicWindow, v, minPanicWindow, maxWindow)
	}
	if v, ok := get(AnnPanicThreshold); ok {
		p.cfg.PanicThreshold = p.float(AnnPanicThreshold, v, minThreshold, true, maxThreshold,
			fmt.Sprintf("a number between %g and %g", minThreshold, maxThreshold))
	}
	if v, ok := get(AnnScaleDownDelay); ok && v != "cold-start" {
		n := len(p.errs)
		p.cfg.ScaleDownDelay = p.duration(AnnScaleDownDelay, v, 0, maxDelay)
		if len(p.errs) > n {
			p.errs[n].Allowed = `"cold-start" or ` + p.errs[n].Allowed
		}
	}
	rateRange := fmt.Sprintf("a number > %g and ≤ %g", minRate, maxRate)
	if v, ok := get(AnnMaxScaleUpRate); ok {
		p.cfg.MaxScaleUpRate = p.float(AnnMaxScaleUpRate, v, minRate, false, maxRate, rateRange)
	}
	if v, ok := get(AnnMaxScaleDownRate); ok {
		p.cfg.MaxScaleDownRate = p.float(AnnMaxScaleDownRate, v, minRate, false, maxRate, rateRange)
	}
	if v, ok := get(AnnColdStart); ok && v != "learned" {
		p.cfg.ColdStart = p.duration(AnnColdStart, v, 0, maxColdStart)
	}
	if v, ok := get(AnnMaxQueue); ok && v != "off" {
		p.cfg.MaxQueue = p.float(AnnMaxQueue, v, 0, false, maxQueueCap,
			fmt.Sprintf(`"off" or a number > 0 and ≤ %g`, maxQueueCap))
	}
	if len(p.errs) == 0 {
		p.errs = append(p.errs, p.cfg.crossErrors()...)
	}
	if len(p.errs) > 0 {
		sort.Slice(p.errs, func(i, j int) bool { return p.errs[i].Annotation < p.errs[j].Annotation })
		return Config{}, &ConfigError{Fields: p.errs}
	}
	return p.cfg, nil
}

var annotationNames = []string{
	AnnTarget, AnnMinReplicas, AnnMaxReplicas, AnnWindow, AnnPanicWindow,
	AnnPanicThreshold, AnnScaleDownDelay, AnnMaxScaleUpRate, AnnMaxScaleDownRate,
	AnnColdStart, AnnMaxQueue,
}

var targetRange = fmt.Sprintf("a number > 0 and ≤ %g (requests in flight per replica)", maxTarget)

// Validate checks a Config built in code (the simulator builds them so)
// against the same ranges as ParseAnnotations.
func (c Config) Validate() error {
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	var errs []FieldError
	add := func(name, val, allowed string) {
		errs = append(errs, FieldError{AnnotationPrefix + name, val, allowed})
	}
	if !(c.Target > 0 && c.Target <= maxTarget) {
		add(AnnTarget, f(c.Target), targetRange)
	}
	if c.MinReplicas < 0 || c.MinReplicas > maxReplicasCap {
		add(AnnMinReplicas, fmt.Sprint(c.MinReplicas), fmt.Sprintf("an integer between 0 and %d", maxReplicasCap))
	}
	if c.MaxReplicas < 1 || c.MaxReplicas > maxReplicasCap {
		add(AnnMaxReplicas, fmt.Sprint(c.MaxReplicas), fmt.Sprintf("an integer between 1 and %d", maxReplicasCap))
	}
	durs := []struct {
		name   string
		v      time.Duration
		lo, hi time.Duration
	}{
		{AnnWindow, c.Window, minWindow, maxWindow},
		{AnnPanicWindow, c.PanicWindow, minPanicWindow, maxWindow},
		{AnnColdStart, c.ColdStart, 0, maxColdStart},
	}
	if d := c.ScaleDownDelay; d != ScaleDownDelayColdStart && (d < 0 || d > maxDelay) {
		add(AnnScaleDownDelay, d.String(), fmt.Sprintf(`"cold-start" or a duration between 0s and %v`, maxDelay))
	}
	for _, d := range durs {
		if d.v < d.lo || d.v > d.hi {
			add(d.name, d.v.String(), fmt.Sprintf("a duration between %v and %v", d.lo, d.hi))
		}
	}
	if !(c.PanicThreshold >= minThreshold && c.PanicThreshold <= maxThreshold) {
		add(AnnPanicThreshold, f(c.PanicThreshold), fmt.Sprintf("a number between %g and %g", minThreshold, maxThreshold))
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{AnnMaxScaleUpRate, c.MaxScaleUpRate}, {AnnMaxScaleDownRate, c.MaxScaleDownRate}} {
		if !(r.v > minRate && r.v <= maxRate) {
			add(r.name, f(r.v), fmt.Sprintf("a number > %g and ≤ %g", minRate, maxRate))
		}
	}
	if !(c.MaxQueue >= 0 && c.MaxQueue <= maxQueueCap) {
		add(AnnMaxQueue, f(c.MaxQueue), fmt.Sprintf(`"off" or a number > 0 and ≤ %g`, maxQueueCap))
	}
	if len(errs) == 0 {
		errs = c.crossErrors()
	}
	if len(errs) > 0 {
		return &ConfigError{Fields: errs}
	}
	return nil
}

// crossErrors checks the relations between valid fields.
func (c Config) crossErrors() []FieldError {
	var errs []FieldError
	if c.MinReplicas > c.MaxReplicas {
		errs = append(errs, FieldError{AnnotationPrefix + AnnMinReplicas, fmt.Sprint(c.MinReplicas),
			fmt.Sprintf("an integer between 0 and max-replicas (%d)", c.MaxReplicas)})
	}
	if c.PanicWindow > c.Window {
		errs = append(errs, FieldError{AnnotationPrefix + AnnPanicWindow, c.PanicWindow.String(),
			fmt.Sprintf("a duration between %v and window (%v)", minPanicWindow, c.Window)})
	}
	return errs
}

// parser accumulates every error instead of stopping at the first.
type parser struct {
	cfg  Config
	errs []FieldError
}

func (p *parser) fail(name, value, allowed string) {
	p.errs = append(p.errs, FieldError{AnnotationPrefix + name, value, allowed})
}

// float parses a finite number in (lo, hi] (or [lo, hi] when loInclusive).
func (p *parser) float(name, v string, lo float64, loInclusive bool, hi float64, allowed string) float64 {
	x, err := strconv.ParseFloat(v, 64)
	ok := err == nil && !math.IsNaN(x) && x <= hi && (x > lo || (loInclusive && x == lo))
	if !ok {
		p.fail(name, v, allowed)
		return 0
	}
	return x
}

func (p *parser) int(name, v string, lo, hi int64) int32 {
	x, err := strconv.ParseInt(v, 10, 32)
	if err != nil || x < lo || x > hi {
		p.fail(name, v, fmt.Sprintf("an integer between %d and %d", lo, hi))
		return 0
	}
	return int32(x)
}

// duration parses a Go duration ("90s", "2m") or a bare number of seconds.
func (p *parser) duration(name, v string, lo, hi time.Duration) time.Duration {
	d, err := time.ParseDuration(v)
	if err != nil {
		if s, ferr := strconv.ParseFloat(v, 64); ferr == nil && !math.IsNaN(s) && !math.IsInf(s, 0) &&
			math.Abs(s) < float64(maxWindow/time.Second)*10 {
			d, err = time.Duration(s*float64(time.Second)), nil
		}
	}
	if err != nil || d < lo || d > hi {
		p.fail(name, v, fmt.Sprintf("a duration between %v and %v (e.g. \"90s\", \"2m\")", lo, hi))
		return 0
	}
	return d
}
