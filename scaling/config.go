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

// Annotation names (without the prefix). The table that parses, validates
// and documents them is annotationTable; README.md's table is checked
// against it.
const (
	AnnTarget           = "target"
	AnnSLOWait          = "slo-wait"
	AnnConcurrency      = "concurrency"
	AnnMinReplicas      = "min-replicas"
	AnnMaxReplicas      = "max-replicas"
	AnnWindow           = "window"
	AnnPanicWindow      = "panic-window"
	AnnPanicThreshold   = "panic-threshold"
	AnnScaleDownDelay   = "scale-down-delay"
	AnnMaxScaleUpRate   = "max-scale-up-rate"
	AnnMaxScaleDownRate = "max-scale-down-rate"
	AnnColdStart        = "cold-start"
	AnnForecastPeriod   = "forecast-period"
	AnnMaxQueue         = "max-queue"
	AnnHoldTimeout      = "hold-timeout"
)

// Defaults of the annotation table. Target has none: it (or slo-wait) is
// required.
const (
	DefaultMinReplicas      = 1
	DefaultMaxReplicas      = 10
	DefaultWindow           = 60 * time.Second
	DefaultPanicWindow      = 6 * time.Second
	DefaultPanicThreshold   = 2.0
	DefaultScaleDownDelay   = ScaleDownDelayColdStart
	DefaultMaxScaleUpRate   = 10.0
	DefaultMaxScaleDownRate = 2.0
	// DefaultForecastPeriod is the season of the learned forecast: a day.
	// The forecast acts only once a full period of history exists.
	DefaultForecastPeriod = 24 * time.Hour
	// DefaultHoldTimeout bounds how long the extproc holds a request for a
	// workload at zero: two default cold starts, and under the 5-minute
	// stream idle and request timeouts that Istio's EDGE connection profile
	// sets on gateways (a longer hold needs those raised).
	DefaultHoldTimeout = 4 * time.Minute
	// MaxHoldTimeout is the longest hold-timeout: the extproc extends
	// Envoy's per-message timer to hold-timeout + 1 s with one
	// override_message_timeout, which Envoy honours only up to the filter's
	// max_message_timeout, itself at most 1 h (istio.MaxMessageTimeout).
	MaxHoldTimeout = 59 * time.Minute
	// DefaultColdStartLead is the lead time used when neither the
	// cold-start annotation nor a learned value is known: two minutes, the
	// order of loading a model of several GB onto a GPU.
	DefaultColdStartLead = 120 * time.Second
)

// MinTarget is the smallest target accepted: below it one request in
// flight would ask for more than 100 replicas, which is never meant.
const MinTarget = 0.01

// ScaleDownDelayColdStart is the ScaleDownDelay that follows the cold
// start (Config.ColdStart, else the learned one, else
// DefaultColdStartLead): the ski-rental break-even. Holding an idle replica
// for one cold start and then releasing it never costs more than twice
// what knowing the future would have (pay for the idle time, or for the
// GPU time of a start-up), whatever the load does next.
const ScaleDownDelayColdStart time.Duration = -1

// Config is the validated per-workload configuration. Build it with
// ParseAnnotations (or DefaultConfig and Validate); a Config that failed
// validation must never be used to scale.
type Config struct {
	// Target is the number of requests in flight per replica to aim for;
	// 0 when only SLOWait is set.
	Target float64
	// SLOWait, when not 0, sizes the workload so that the predicted p99
	// queue wait stays within it (see Decide). With Target also set, the
	// larger of the two counts wins.
	SLOWait time.Duration
	// Concurrency is the number of requests one replica serves at once
	// (its batch capacity), for the queueing model of SLOWait; 0 means
	// learn it (Target until then, else the most requests a replica was
	// seen to serve at once without queueing).
	Concurrency int32
	// MinReplicas and MaxReplicas bound the decision; MinReplicas 0 allows
	// scale to zero.
	MinReplicas, MaxReplicas int32
	// Window is the stable averaging window; PanicWindow the burst window.
	Window, PanicWindow time.Duration
	// PanicThreshold: burst mode when short-window demand ≥ threshold ×
	// ready capacity.
	PanicThreshold float64
	// ScaleDownDelay: no scale-down until demand has stayed lower this long.
	// ScaleDownDelayColdStart (the default; annotation value "cold-start")
	// means one cold-start lead: keeping an idle replica longer than it
	// takes to bring one back costs more than bringing it back would.
	ScaleDownDelay time.Duration
	// MaxScaleUpRate caps the replicas requested at rate × the ready ones
	// (at least 1): replicas still starting count against it, so the count
	// grows at most ×rate per cold start, not per tick. MaxScaleDownRate
	// floors one decision at floor(current / rate).
	MaxScaleUpRate, MaxScaleDownRate float64
	// ColdStart is the expected time from a scale-up to a ready replica;
	// 0 means "learn it" (Observation.ColdStart, else DefaultColdStartLead).
	ColdStart time.Duration
	// ForecastPeriod is the season of the learned forecast; 0 is off.
	ForecastPeriod time.Duration
	// MaxQueue is the per-replica in-flight beyond which the extproc sheds
	// load (control profile); 0 means off. The policy does not use it.
	MaxQueue float64
	// HoldTimeout is how long the extproc holds a request for a workload
	// with no ready replica before answering 503 (edge contexts). The
	// policy does not use it.
	HoldTimeout time.Duration
}

// DefaultConfig returns the defaults of the annotation table with the
// given target.
func DefaultConfig(target float64) Config {
	c := Config{}
	for _, a := range annotationTable {
		if a.def != "" {
			a.set(&c, a.defValue)
		}
	}
	c.Target = target
	return c
}

// HasAnnotations reports whether ann holds any inflight.dev/ annotation:
// the controller must look at such a Deployment even without a valid
// target, to report what is wrong with it.
func HasAnnotations(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) {
			return true
		}
	}
	return false
}

// Enabled reports whether ann holds an annotation that enables inflight
// (target or slo-wait): the controller manages such a Deployment, and
// reports the others with inflight.dev/ annotations as not managed.
func Enabled(ann map[string]string) bool {
	for _, e := range enabling {
		if _, ok := ann[AnnotationPrefix+e]; ok {
			return true
		}
	}
	return false
}

// FieldError is one invalid annotation: its full name, the value as
// written, and what is allowed.
type FieldError struct {
	Annotation string // full name, with the prefix
	Value      string // as written ("" when missing)
	Allowed    string // e.g. "a duration between 6s and 1h"
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

// kind is the type of an annotation's value.
type kind uint8

const (
	kindNumber   kind = iota // a finite float
	kindInteger              // an int32
	kindDuration             // a Go duration ("90s") or a bare number of seconds
)

// annotation is one row of the table: everything the parser, the
// validator and the README know about one annotation.
type annotation struct {
	name string
	kind kind
	// lo, hi bound the value (seconds for durations); loOpen excludes lo.
	lo, hi float64
	loOpen bool
	// word is a special value ("off", "learned", "cold-start"), stored
	// as wordValue; "" if none.
	word      string
	wordValue float64
	// def is the default as the README writes it ("" = required); defValue
	// the value it stands for.
	def      string
	defValue float64
	// also is a relation to another annotation, checked after the ranges
	// (e.g. "≤ max-replicas"), for the README.
	also    string
	meaning string
	// field returns a pointer to the Config field: *float64, *int32 or
	// *time.Duration.
	field func(*Config) any
}

const (
	maxReplicasCap = 100000
	hour           = float64(time.Hour / time.Second)
)

// annotationTable is the one definition of every annotation: name, kind,
// range, special word, default and meaning. ParseAnnotations, Validate,
// DefaultConfig and the README table (TestREADMEAnnotationTable) all come
// from it.
var annotationTable = []annotation{
	{name: AnnTarget, kind: kindNumber, lo: MinTarget, hi: 1e6,
		meaning: "requests in flight per replica to aim for; this or `slo-wait` enables inflight",
		field:   func(c *Config) any { return &c.Target }},
	{name: AnnSLOWait, kind: kindDuration, lo: 0.1, hi: hour, word: "off", def: "off",
		meaning: "size so that the predicted p99 queue wait stays within this: an M/M/c model of the learned service time, the arrival rate and `concurrency`, with a headroom learned from the workload's own bursts; with `target` too, the larger count wins",
		field:   func(c *Config) any { return &c.SLOWait }},
	{name: AnnConcurrency, kind: kindInteger, lo: 1, hi: maxReplicasCap, word: "learned", def: "learned",
		meaning: "requests one replica serves at once (its batch, e.g. vLLM's `max_num_seqs`), for `slo-wait`; learned: `target` if set, else the most a replica was seen to serve at once without queueing (a lower bound: set it)",
		field:   func(c *Config) any { return &c.Concurrency }},
	{name: AnnMinReplicas, kind: kindInteger, lo: 0, hi: maxReplicasCap, def: "1", defValue: DefaultMinReplicas,
		also:    "≤ max-replicas",
		meaning: "lower bound; 0 allows scale to zero after a learned idle period (demand at zero asks for a replica on the next tick)",
		field:   func(c *Config) any { return &c.MinReplicas }},
	{name: AnnMaxReplicas, kind: kindInteger, lo: 1, hi: maxReplicasCap, def: "10", defValue: DefaultMaxReplicas,
		meaning: "upper bound",
		field:   func(c *Config) any { return &c.MaxReplicas }},
	{name: AnnWindow, kind: kindDuration, lo: 6, hi: hour, def: "60s", defValue: DefaultWindow.Seconds(),
		meaning: "stable averaging window",
		field:   func(c *Config) any { return &c.Window }},
	{name: AnnPanicWindow, kind: kindDuration, lo: 1, hi: hour, def: "6s", defValue: DefaultPanicWindow.Seconds(),
		also:    "≤ window",
		meaning: "burst-detection window; it sizes scale-ups only in burst mode",
		field:   func(c *Config) any { return &c.PanicWindow }},
	{name: AnnPanicThreshold, kind: kindNumber, lo: 1.1, hi: 10, def: "2", defValue: DefaultPanicThreshold,
		meaning: "burst mode when short-window demand ≥ threshold × ready capacity",
		field:   func(c *Config) any { return &c.PanicThreshold }},
	{name: AnnScaleDownDelay, kind: kindDuration, lo: 0, hi: hour, word: "cold-start",
		wordValue: ScaleDownDelayColdStart.Seconds(), def: "cold-start", defValue: ScaleDownDelayColdStart.Seconds(),
		meaning: "no scale-down until demand has stayed lower this long; `cold-start` = one cold start (the ski-rental break-even: an idle replica kept longer than it takes to bring one back costs more than bringing it back)",
		field:   func(c *Config) any { return &c.ScaleDownDelay }},
	{name: AnnMaxScaleUpRate, kind: kindNumber, lo: 1, loOpen: true, hi: 1000, def: "10", defValue: DefaultMaxScaleUpRate,
		meaning: "replicas requested at most rate × ready replicas (at least 1): those still starting count, so the count grows at most ×rate per cold start, not per tick",
		field:   func(c *Config) any { return &c.MaxScaleUpRate }},
	{name: AnnMaxScaleDownRate, kind: kindNumber, lo: 1, loOpen: true, hi: 1000, def: "2", defValue: DefaultMaxScaleDownRate,
		meaning: "one decision at least current ÷ rate",
		field:   func(c *Config) any { return &c.MaxScaleDownRate }},
	{name: AnnColdStart, kind: kindDuration, lo: 0, hi: hour, word: "learned", def: "learned",
		meaning: "expected time from scale-up to a ready replica (0s = learned); learned from observed pod start-ups (created → Ready), 120 s until one is seen",
		field:   func(c *Config) any { return &c.ColdStart }},
	{name: AnnForecastPeriod, kind: kindDuration, lo: 600, hi: 7 * 24 * hour, word: "off", def: "24h", defValue: DefaultForecastPeriod.Seconds(),
		meaning: "season of the learned forecast: one cold start ahead (plus a margin for timing: another cold start, or 20 s while this period lines up with the last), it asks for the level the arrivals held for a minute one period ago; acts after a full period of history (a new controller leader starts over), is dropped while the arrivals stay under half of it",
		field:   func(c *Config) any { return &c.ForecastPeriod }},
	{name: AnnMaxQueue, kind: kindNumber, lo: 0, loOpen: true, hi: 1e6, word: "off", def: "off",
		meaning: "requests in flight per ready replica beyond which the extproc sheds new ones with 429 + `Retry-After` (control profile; the gate's `max_in_flight` = max-queue × ready replicas, `max_held` = max-queue × max(1, replicas requested))",
		field:   func(c *Config) any { return &c.MaxQueue }},
	{name: AnnHoldTimeout, kind: kindDuration, lo: 1, hi: MaxHoldTimeout.Seconds(), def: "4m", defValue: DefaultHoldTimeout.Seconds(),
		meaning: "how long a request to a workload at zero may be held at the edge before a 503 with `Retry-After`; enforced by the extproc at the edge (control profile) from the gate table; 4m: two default cold starts, under the 5-minute timeouts of Istio's EDGE connection profile",
		field:   func(c *Config) any { return &c.HoldTimeout }},
}

// enabling are the annotations of which at least one must be present.
var enabling = []string{AnnTarget, AnnSLOWait}

func lookup(name string) *annotation {
	for i := range annotationTable {
		if annotationTable[i].name == name {
			return &annotationTable[i]
		}
	}
	return nil
}

// set stores v (seconds for a duration) in the field.
func (a *annotation) set(c *Config, v float64) {
	switch p := a.field(c).(type) {
	case *float64:
		*p = v
	case *int32:
		*p = int32(v)
	case *time.Duration:
		*p = secs(v)
	}
}

// get returns the field's value (seconds for a duration) and whether it is
// the special word's value.
func (a *annotation) get(c *Config) (v float64, isWord bool) {
	switch p := a.field(c).(type) {
	case *float64:
		v = *p
	case *int32:
		v = float64(*p)
	case *time.Duration:
		v = p.Seconds()
	}
	return v, a.word != "" && v == a.wordValue
}

// inRange reports whether v is within the row's range.
func (a *annotation) inRange(v float64) bool {
	if math.IsNaN(v) || v > a.hi {
		return false
	}
	if a.loOpen {
		return v > a.lo
	}
	return v >= a.lo
}

// allowed says what the row accepts, for errors and the README.
func (a *annotation) allowed(short bool) string {
	var r string
	switch a.kind {
	case kindNumber:
		switch {
		case short && a.loOpen:
			r = fmt.Sprintf("> %s, ≤ %s", fmtNum(a.lo), fmtNum(a.hi))
		case short:
			r = fmt.Sprintf("%s – %s", fmtNum(a.lo), fmtNum(a.hi))
		case a.loOpen:
			r = fmt.Sprintf("a number > %s and ≤ %s", fmtNum(a.lo), fmtNum(a.hi))
		default:
			r = fmt.Sprintf("a number between %s and %s", fmtNum(a.lo), fmtNum(a.hi))
		}
	case kindInteger:
		if short {
			r = fmt.Sprintf("%s – %s", fmtNum(a.lo), fmtNum(a.hi))
		} else {
			r = fmt.Sprintf("an integer between %s and %s", fmtNum(a.lo), fmtNum(a.hi))
		}
	case kindDuration:
		lo, hi := FormatDuration(secs(a.lo)), FormatDuration(secs(a.hi))
		if short {
			r = lo + " – " + hi
		} else {
			r = fmt.Sprintf(`a duration between %s and %s (e.g. "90s", "2m")`, lo, hi)
		}
	}
	switch {
	case a.word != "" && short:
		r = "`" + a.word + "` or " + r
	case a.word != "":
		r = strconv.Quote(a.word) + " or " + r
	}
	return r
}

func secs(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

// fmtNum writes x shortly: 0.01, 1.5, 1e6.
func fmtNum(x float64) string {
	return strings.Replace(strconv.FormatFloat(x, 'g', -1, 64), "e+0", "e", 1)
}

// FormatDuration writes d as time.Duration does, without zero units:
// 1h, 4m, 1m30s, 100ms.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// parse reads one value as written; ok is false when it is invalid.
func (a *annotation) parse(v string) (float64, bool) {
	if a.word != "" && v == a.word {
		return a.wordValue, true
	}
	var x float64
	switch a.kind {
	case kindNumber:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, false
		}
		x = f
	case kindInteger:
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return 0, false
		}
		x = float64(n)
	case kindDuration:
		d, err := time.ParseDuration(v)
		if err == nil {
			x = d.Seconds()
		} else if f, ferr := strconv.ParseFloat(v, 64); ferr == nil && math.Abs(f) < 1e9 {
			x = f // a bare number of seconds
		} else {
			return 0, false
		}
	}
	return x, a.inRange(x)
}

// ParseAnnotations reads the inflight.dev/ annotations of a Deployment and
// returns the configuration with defaults applied. Annotations without the
// prefix are ignored; an unknown name under the prefix is an error naming
// the known annotation it is probably a typo of; so is a set without
// target or slo-wait. On error the returned Config is the zero value and
// err is a *ConfigError naming every invalid annotation.
func ParseAnnotations(ann map[string]string) (Config, error) {
	cfg := DefaultConfig(0)
	var errs []FieldError
	fail := func(name, value, allowed string) {
		errs = append(errs, FieldError{AnnotationPrefix + name, value, allowed})
	}
	enabled := false
	for k, raw := range ann {
		name, ok := strings.CutPrefix(k, AnnotationPrefix)
		if !ok {
			continue
		}
		a := lookup(name)
		if a == nil {
			fail(name, raw, unknownAllowed(name))
			continue
		}
		for _, e := range enabling {
			enabled = enabled || name == e
		}
		v, ok := a.parse(strings.TrimSpace(raw))
		if !ok {
			fail(name, raw, a.allowed(false))
			continue
		}
		a.set(&cfg, v)
	}
	if !enabled {
		fail(AnnTarget, "", lookup(AnnTarget).allowed(false)+" (requests in flight per replica), or "+
			AnnotationPrefix+AnnSLOWait+" (a p99 queue wait): one of them enables inflight")
	}
	if len(errs) == 0 {
		errs = cfg.crossErrors()
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Annotation < errs[j].Annotation })
		return Config{}, &ConfigError{Fields: errs}
	}
	return cfg, nil
}

// unknownAllowed names the known annotation closest to a misspelt one.
func unknownAllowed(name string) string {
	best, bestD := "", 4
	names := make([]string, len(annotationTable))
	for i, a := range annotationTable {
		names[i] = a.name
		if d := editDistance(name, a.name); d < bestD {
			best, bestD = a.name, d
		}
	}
	known := "one of " + AnnotationPrefix + "{" + strings.Join(names, ",") + "}"
	if best != "" {
		return fmt.Sprintf("%s%s (a typo?); %s", AnnotationPrefix, best, known)
	}
	return known
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Validate checks a Config built in code (the simulator builds them so)
// against the same table as ParseAnnotations.
func (c Config) Validate() error {
	var errs []FieldError
	for i := range annotationTable {
		a := &annotationTable[i]
		v, isWord := a.get(&c)
		if a.name == AnnTarget && v == 0 && c.SLOWait > 0 {
			continue // slo-wait alone enables
		}
		if !isWord && !a.inRange(v) {
			val := fmtNum(v)
			if a.kind == kindDuration {
				val = FormatDuration(secs(v))
			}
			errs = append(errs, FieldError{AnnotationPrefix + a.name, val, a.allowed(false)})
		}
	}
	if len(errs) == 0 {
		errs = c.crossErrors()
	}
	if len(errs) > 0 {
		return &ConfigError{Fields: errs}
	}
	return nil
}

// crossErrors checks the relations between valid fields (the rows' also).
func (c Config) crossErrors() []FieldError {
	var errs []FieldError
	if c.MinReplicas > c.MaxReplicas {
		errs = append(errs, FieldError{AnnotationPrefix + AnnMinReplicas, fmt.Sprint(c.MinReplicas),
			fmt.Sprintf("an integer between 0 and max-replicas (%d)", c.MaxReplicas)})
	}
	if c.PanicWindow > c.Window {
		errs = append(errs, FieldError{AnnotationPrefix + AnnPanicWindow, FormatDuration(c.PanicWindow),
			fmt.Sprintf("a duration between %s and window (%s)", FormatDuration(secs(lookup(AnnPanicWindow).lo)), FormatDuration(c.Window))})
	}
	return errs
}

// AnnotationsMarkdown renders the annotation table as README.md shows it:
// annotation, default, allowed values, meaning.
func AnnotationsMarkdown() string {
	var b strings.Builder
	b.WriteString("| annotation | default | allowed | meaning |\n|---|---|---|---|\n")
	for i := range annotationTable {
		a := &annotationTable[i]
		def := "—"
		if a.def != "" {
			def = a.def
			if a.word == a.def {
				def = "`" + def + "`"
			}
		}
		allowed := a.allowed(true)
		if a.also != "" {
			allowed += ", " + a.also
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", a.name, def, allowed, a.meaning)
	}
	return b.String()
}
