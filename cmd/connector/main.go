// Command connector bridges upstream streaming sessions (LaserSell Exit
// Intelligence Stream, Hyundai Hi6 Open Stream) into NATS JetStream.
//
//	connector                 run the connector (same as "connector run")
//	connector demo            embedded NATS + both simulators + both sources, with a live summary
//	connector sim lasersell   run the LaserSell simulator
//	connector sim openstream  run the Open Stream robot-controller simulator
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// version is reported by the command services and `connector version`.
const version = "0.1.0"

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		// The connector allocates per event and has memory to spare: collecting
		// less often buys throughput (BENCHMARKS.md). GOGC overrides.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := dispatch(ctx, os.Args[1:], os.Stdout)
	stop()
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	fmt.Fprintln(os.Stderr, "connector:", err)
	var ce *configError
	if errors.As(err, &ce) {
		os.Exit(2)
	}
	os.Exit(1)
}

const usage = `usage: connector [run | demo | sim lasersell | sim openstream | env | version | help]

  run              run the connector, configured by environment variables (default)
  demo             embedded NATS + both simulators + both sources, with a live summary
  sim lasersell    run the LaserSell Exit Intelligence Stream simulator (-h for flags)
  sim openstream   run the Hi6 Open Stream robot-controller simulator (-h for flags)
  env              list every configuration variable with its default and meaning

Configuration variables are listed in README.md.`

func dispatch(ctx context.Context, args []string, stdout io.Writer) error {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runConnector(ctx)
	case "demo":
		return runDemo(ctx, args, stdout)
	case "sim":
		if len(args) == 0 {
			return badConfig("sim needs a simulator name: lasersell or openstream")
		}
		return runSim(ctx, args[0], args[1:])
	case "env":
		return printEnv(stdout)
	case "version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return badConfig("unknown command %q\n%s", cmd, usage)
}

// newLogger builds the process logger: JSON for machines, console for people.
func newLogger(level, format string, out io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	console := format == "console"
	if format == "auto" {
		if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			console = true
		}
	}
	if console {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}
