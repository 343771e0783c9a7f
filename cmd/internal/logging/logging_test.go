package logging

import (
	"flag"
	"strings"
	"testing"
)

func TestAddFlagsValidateNew(t *testing.T) {
	o := DefaultOptions()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--log-level=warn", "--log-format=console"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	l, err := o.New()
	if err != nil {
		t.Fatal(err)
	}
	if l.Core().Enabled(-1) || !l.Core().Enabled(1) {
		t.Fatal("level warn not applied")
	}
	bad := Options{Level: "loud", Format: "xml"}
	err = bad.Validate()
	if err == nil {
		t.Fatal("no error for two invalid flags")
	}
	// Every error at once, one line each.
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `--log-level="loud"`) || !strings.Contains(lines[1], `--log-format="xml"`) {
		t.Fatalf("errors %q", lines)
	}
	if _, err := bad.New(); err == nil {
		t.Fatal("New accepted an invalid level")
	}
}
