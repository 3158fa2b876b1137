package main

import (
	"context"
	"errors"
	"flag"
	"os"

	"strings"

	"github.com/rs/zerolog"
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
	kinds := builtinKinds()
	var names []string
	for _, k := range kinds {
		if k.Simulator == nil {
			continue
		}
		names = append(names, k.Name())
		if k.Name() != name {
			continue
		}
		fs := flag.NewFlagSet("connector sim "+name, flag.ContinueOnError)
		run := k.Simulator(fs)
		if err := parseFlags(fs, args, os.Stderr); err != nil {
			return nil, flagError(err)
		}
		if err := run.Validate(); err != nil {
			return nil, badConfig("%v", err)
		}
		return func() (func(), error) {
			addr, stop, err := run.Start(log)
			if err != nil {
				return nil, err
			}
			log.Info().Str("kind", k.Name()).Str("addr", addr).Msg("simulator listening")
			return stop, nil
		}, nil
	}
	return nil, badUsage("sim: unknown simulator %q: %s", name, strings.Join(names, " or "))
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
