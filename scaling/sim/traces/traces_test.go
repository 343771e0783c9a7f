package traces

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The built-in trace loads with no file around it: this test runs from a
// temporary working directory with nothing beside it (no ../shared).
func TestBuiltinNeedsNoFiles(t *testing.T) {
	t.Chdir(t.TempDir())
	tr, err := Load(AzureConv)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Name != AzureConv || len(tr.Requests) != 19366 {
		t.Fatalf("%s: %d requests, want %s with 19366", tr.Name, len(tr.Requests), AzureConv)
	}
	if d := tr.Duration; d < 3500 || d > 3600 {
		t.Errorf("duration %.0f s, want about an hour", d)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mine.csv")
	data := "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00.0000000,100,10\n2023-11-16 18:15:01.0000000,100,10\n"
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := Load(p)
	if err != nil || tr.Name != "mine" || len(tr.Requests) != 2 {
		t.Fatalf("got %q with %d requests, %v", tr.Name, len(tr.Requests), err)
	}
	if err := os.WriteFile(p, []byte(data+"2023-11-16 18:15:02.0000000,x,10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p+":4:") {
		t.Errorf("bad row: want the file and line named, got %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "absent.csv")); err == nil ||
		!strings.Contains(err.Error(), "absent.csv") || !strings.Contains(err.Error(), AzureConv) {
		t.Errorf("missing file: want its path and the built-in names, got %v", err)
	}
}
