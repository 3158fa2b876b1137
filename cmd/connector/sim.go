package main

import (
	"context"
	"errors"
	"flag"
	"os"

	"github.com/rs/zerolog"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
)

// runSim runs one simulator in the foreground until ctx ends (docker-compose,
// manual testing). Flags configure traffic and faults.
func runSim(ctx context.Context, name string, args []string) error {
	log := newLogger(os.Getenv("LOG_LEVEL"), envOr("LOG_FORMAT", "auto"), os.Stdout).With().Str("sim", name).Logger()
	start, err := parseSim(name, args, log)
	if err != nil || start == nil {
		return err
	}
	stop, err := start()
	if err != nil {
		return err
	}
	<-ctx.Done()
	stop()
	return nil
}

// parseSim parses a simulator's flags and returns how to start it; nil when
// only help was asked for.
func parseSim(name string, args []string, log zerolog.Logger) (start func() (stop func(), err error), err error) {
	fs := flag.NewFlagSet("connector sim "+name, flag.ContinueOnError)
	switch name {
	case "lasersell":
		cfg := lssim.DemoConfig()
		cfg.RegisterFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, flagError(err)
		}
		if err := cfg.Validate(); err != nil {
			return nil, badConfig("%v", err)
		}
		return func() (func(), error) {
			srv := lssim.New(cfg, log)
			url, err := srv.Start(cfg.Addr)
			if err != nil {
				return nil, err
			}
			log.Info().Str("url", url).Msg("LaserSell simulator listening")
			return srv.Close, nil
		}, nil
	case "openstream":
		cfg := ossim.DefaultConfig()
		cfg.RegisterFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, flagError(err)
		}
		return func() (func(), error) {
			srv := ossim.New(cfg, log)
			addr, err := srv.Start(cfg.Addr)
			if err != nil {
				return nil, err
			}
			log.Info().Str("addr", addr).Msg("Open Stream robot-controller simulator listening")
			return func() { _ = srv.Close() }, nil
		}, nil
	}
	return nil, badConfig("unknown simulator %q: lasersell or openstream", name)
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return badUsage("%v", err)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// stdoutFile is where the process logs.
func stdoutFile() *os.File { return os.Stdout }
