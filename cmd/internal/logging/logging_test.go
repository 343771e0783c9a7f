package logging

import (
	"flag"
	"strings"
	"testing"
)

func TestAddFlagsValidateNew(t *testing.T) {
	o := Defaults()
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
	if err == nil || !strings.Contains(err.Error(), `--log-level="loud"`) || !strings.Contains(err.Error(), `--log-format="xml"`) {
		t.Fatalf("want both flags reported at once, got %v", err)
	}
	if _, err := bad.New(); err == nil {
		t.Fatal("New accepted an invalid level")
	}
}
