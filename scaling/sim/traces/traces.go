// Package traces holds the request traces that ship with inflight, compiled
// into the binaries that replay them, so that the simulator and the demo need
// nothing outside the repository (see README.md here for the source, the
// licence and the attribution). It has no state: safe for concurrent use.
package traces

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/inflight-dev/inflight/scaling/sim"
)

// AzureConv names the Azure LLM conversation hour (CC BY 4.0; README.md).
const AzureConv = "azure-llm-2023-conv"

//go:embed azure-llm-2023-conv.csv
var azureConv []byte

var builtin = map[string][]byte{AzureConv: azureConv}

// Names returns the names of the built-in traces, sorted.
func Names() []string {
	out := make([]string, 0, len(builtin))
	for n := range builtin {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Load returns the trace called ref: a built-in name (see Names), or the path
// of a CSV file in the format of the Azure trace. A file's trace is named
// after its base name without ".csv". Errors name the file as given (and the
// line, for a malformed row: "path/to/x.csv:12: …").
func Load(ref string) (sim.Trace, error) {
	if b, ok := builtin[ref]; ok {
		tr, err := sim.LoadCSV(ref, bytes.NewReader(b))
		if ref == AzureConv {
			tr.Kind = "conversation"
		}
		return tr, err
	}
	f, err := os.Open(ref)
	if err != nil {
		return sim.Trace{}, fmt.Errorf("trace %s: %w (built-in traces: %s)", ref, err, strings.Join(Names(), ", "))
	}
	defer f.Close()
	tr, err := sim.LoadCSV(ref, f) // errors name the path and the line
	tr.Name = strings.TrimSuffix(filepath.Base(ref), ".csv")
	return tr, err
}
