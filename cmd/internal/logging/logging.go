// Package logging is the zap set-up shared by inflight's binaries: the
// --log-level and --log-format flags, their validation and the logger. It
// holds no state; each binary embeds Options in its own and builds its
// logger from it.
package logging

import (
	"errors"
	"flag"
	"fmt"
	"strconv"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options are the logging flags of a binary.
type Options struct {
	Level  string // debug, info, warn or error
	Format string // json (production) or console
}

// DefaultOptions are JSON logs at info level.
func DefaultOptions() Options { return Options{Level: "info", Format: "json"} }

// AddFlags registers --log-level and --log-format on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Level, "log-level", o.Level, "debug, info, warn or error")
	fs.StringVar(&o.Format, "log-format", o.Format, "json or console")
}

// Validate reports every invalid flag at once, naming it, its value and
// what is allowed.
func (o Options) Validate() error {
	var errs []error
	if _, err := zapcore.ParseLevel(o.Level); err != nil {
		errs = append(errs, fmt.Errorf("--log-level=%s: want debug, info, warn or error", strconv.Quote(o.Level)))
	}
	if o.Format != "json" && o.Format != "console" {
		errs = append(errs, fmt.Errorf("--log-format=%s: want json or console", strconv.Quote(o.Format)))
	}
	return errors.Join(errs...)
}

// New builds the logger. Request data (headers, paths, bodies) must never be
// passed to it: it may carry user data.
func (o Options) New() (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(o.Level)
	if err != nil {
		return nil, err
	}
	cfg := zap.NewProductionConfig()
	if o.Format == "console" {
		cfg = zap.NewDevelopmentConfig()
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	return cfg.Build()
}
