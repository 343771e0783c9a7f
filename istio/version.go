package istio

import "regexp"

// Generation is a range of Istio releases whose Envoy closes ext_proc streams
// the same way (ENVOY.md §2). An EnvoyFilter carries one patch per
// Generation, selected by Istio's proxyVersion match on the proxy's
// ISTIO_VERSION node metadata.
type Generation struct {
	// Name is a short identifier, used in patch comments and errors.
	Name string
	// Istio and Envoy are the human-readable release ranges.
	Istio, Envoy string
	// ProxyVersion is the RE2 expression for EnvoyFilter
	// match.proxy.proxyVersion. Istio matches it unanchored, so it is
	// anchored here.
	ProxyVersion string
	// EarlyStreamClose is true from Envoy 1.37: the ext_proc stream is
	// closed right after the last expected reply, so the end of a streamed
	// response must come from the response body, not from the stream's end.
	EarlyStreamClose bool
	// Examples are ISTIO_VERSION values of this generation (for tests and
	// for Check's coverage proof).
	Examples []string
}

// Generations returns the proxy generations the install supports, oldest
// first. Istio before 1.24 matches none: such proxies get no patch, and so no
// counting, rather than a configuration their Envoy would reject
// (observability_mode arrived in Envoy 1.31 = Istio 1.23; deferred_close_timeout,
// two fields later, in 1.31 or 1.32 (unverified), so Istio 1.24 = Envoy 1.32 is the first
// release certain to know every field the install sets).
func Generations() []Generation {
	return []Generation{
		{
			Name:         "istio-1.24-1.28",
			Istio:        "1.24 – 1.28",
			Envoy:        "1.32 – 1.36",
			ProxyVersion: `^1\.2[4-8]([.-].*)?$`,
			Examples:     []string{"1.24.0", "1.24.6", "1.25.2", "1.26.0", "1.27.3", "1.28.1", "1.28.0-beta.1", "1.28-dev"},
		},
		{
			Name:             "istio-1.29+",
			Istio:            "≥ 1.29",
			Envoy:            "≥ 1.37",
			ProxyVersion:     `^(1\.(29|[3-9][0-9]|[1-9][0-9]{2,})|[2-9]|[1-9][0-9]+)([.-].*)?$`,
			EarlyStreamClose: true,
			Examples:         []string{"1.29.0", "1.29.1-distroless", "1.30.0", "1.39.2", "1.100.0", "2.0.0", "10.1.0"},
		},
	}
}

// UnsupportedVersions are ISTIO_VERSION values no Generation may match.
func UnsupportedVersions() []string {
	return []string{"", "1.23.0", "1.23.6", "1.22.5", "1.22", "1.2.3", "1.3.0", "1.9.0", "0.8.0", "1.2", "dev", "1.x"}
}

// generationOf returns the index of the Generation whose every example,
// and no other generation's example nor any unsupported version, the
// expression matches; -1 when there is none.
func generationOf(re *regexp.Regexp) int {
	gens := Generations()
	found := -1
	for i, g := range gens {
		all, none := true, true
		for _, v := range g.Examples {
			if re.MatchString(v) {
				none = false
			} else {
				all = false
			}
		}
		switch {
		case all && found == -1:
			found = i
		case all || !none:
			return -1 // matches two generations, or part of one
		}
	}
	for _, v := range UnsupportedVersions() {
		if re.MatchString(v) {
			return -1
		}
	}
	return found
}
