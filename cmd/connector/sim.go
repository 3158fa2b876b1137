package main

import (
	"context"
	"errors"
	"flag"
	"os"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
)

// runSim runs one simulator in the foreground until ctx ends (docker-compose,
// manual testing). Flags configure traffic and faults.
func runSim(ctx context.Context, name string, args []string) error {
	level := os.Getenv("LOG_LEVEL")
	log := newLogger(level, envOr("LOG_FORMAT", "auto"), os.Stdout).With().Str("sim", name).Logger()
	switch name {
	case "lasersell":
		cfg := lssim.DemoConfig()
		fs := flag.NewFlagSet("connector sim lasersell", flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse(args); err != nil {
			return flagError(err)
		}
		srv := lssim.New(cfg, log)
		url, err := srv.Start(cfg.Addr)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info().Str("url", url).Msg("LaserSell simulator listening")
		<-ctx.Done()
		return nil
	case "openstream":
		cfg := ossim.DefaultConfig()
		fs := flag.NewFlagSet("connector sim openstream", flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse(args); err != nil {
			return flagError(err)
		}
		srv := ossim.New(cfg, log)
		addr, err := srv.Start(cfg.Addr)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info().Str("addr", addr).Msg("Open Stream robot-controller simulator listening")
		<-ctx.Done()
		return nil
	}
	return badConfig("unknown simulator %q: lasersell or openstream", name)
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return badConfig("%v", err)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// stdoutFile is where the process logs.
func stdoutFile() *os.File { return os.Stdout }
