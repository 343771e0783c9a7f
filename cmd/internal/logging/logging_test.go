package logging

import (
	"flag"
	"strings"
	"testing"
)

func TestBindValidateNew(t *testing.T) {
	o := Defaults()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.Bind(fs)
	if err := fs.Parse([]string{"--log-level=warn", "--log-format=console"}); err != nil {
		t.Fatal(err)
	}
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errs)
	}
	l, err := o.New()
	if err != nil {
		t.Fatal(err)
	}
	if l.Core().Enabled(-1) || !l.Core().Enabled(1) {
		t.Fatal("level warn not applied")
	}
	bad := Options{Level: "loud", Format: "xml"}
	errs := bad.Validate()
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), `--log-level="loud"`) || !strings.Contains(errs[1].Error(), `--log-format="xml"`) {
		t.Fatalf("errors %v", errs)
	}
	if _, err := bad.New(); err == nil {
		t.Fatal("New accepted an invalid level")
	}
}
