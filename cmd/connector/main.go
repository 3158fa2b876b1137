// Command connector bridges upstream streaming sessions (LaserSell Exit
// Intelligence Stream, Hyundai Hi6 Open Stream) into NATS JetStream.
//
//	connector                 run the connector (same as "connector run")
//	connector demo            embedded NATS + both simulators + both sources, with a live summary
//	connector sim lasersell   run the LaserSell simulator
//	connector sim openstream  run the Open Stream robot-controller simulator
//	connector config [--check] list or validate the configuration
//	connector probe URL       health check for containers
//	connector replay          JetStream history as NDJSON, or re-published under another prefix
//	connector schemas [NAME]  the JSON Schemas of every payload and command
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := dispatch(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, errInterrupted) {
		os.Exit(130)
	}
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

const usage = `usage: connector [command]

  run                 run the connector, configured by environment variables (default)
  demo                embedded NATS + both simulators + both sources, with a live summary
  sim lasersell       run the LaserSell Exit Intelligence Stream simulator (-h for flags)
  sim openstream      run the Hi6 Open Stream robot-controller simulator (-h for flags)
  config              list every configuration variable with its default and meaning (alias: env)
  config --check      load and validate the whole configuration without connecting to anything
  replay              JetStream history by subject and time or sequence range, as NDJSON or
                      re-published under another prefix (-h for flags)
  schemas [NAME|SUBJ] list the JSON Schemas of every payload and command, or print one
  probe URL           GET URL; exit 0 on a 2xx answer, else 1 (container health checks)
  version             print the version
  help                this text and every configuration variable`

func dispatch(ctx context.Context, args []string, stdout io.Writer) error {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		if help, err := parseRun(args, stdout); err != nil || help {
			return err
		}
		return runConnector(ctx)
	case "demo":
		return runDemo(ctx, args, stdout)
	case "sim":
		if len(args) == 0 {
			return badUsage("sim needs a simulator name: lasersell or openstream")
		}
		return runSim(ctx, args[0], args[1:])
	case "config", "env":
		return runConfig(args, stdout)
	case "replay":
		return runReplay(ctx, args, stdout, os.Stderr)
	case "schemas":
		return runSchemas(args, stdout)
	case "probe":
		return runProbe(ctx, args, stdout)
	case "version":
		fmt.Fprintln(stdout, versionLine())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprintf(stdout, "%s\n\nConfiguration (environment variables; README.md explains each):\n\n", usage)
		return printEnv(stdout)
	}
	return badUsage("unknown command %q (connector help lists the commands)", cmd)
}

const runUsage = `usage: connector run

Runs the connector until SIGTERM or Ctrl-C (also what plain "connector" does).
It takes no flags or arguments: everything is configured by environment
variables. "connector config" lists them with their defaults and meanings,
"connector config --check" validates the current environment.
`

// parseRun reads run's command line: nothing but -h. help reports that only
// the help text was asked for (and printed).
func parseRun(args []string, w io.Writer) (help bool, err error) {
	fs := flag.NewFlagSet("connector run", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), runUsage) }
	if err := parseFlags(fs, args, w); err != nil {
		return errors.Is(err, flag.ErrHelp), flagError(err)
	}
	if fs.NArg() > 0 {
		return false, badUsage("run: unexpected argument %q (run takes none; it is configured by environment variables, see connector config)", fs.Arg(0))
	}
	return false, nil
}

// parseFlags parses args into fs. -h prints fs.Usage to help and returns
// flag.ErrHelp; a bad flag returns an error naming the command, which main
// prints once (the flag package's own copy and usage text are discarded).
func parseFlags(fs *flag.FlagSet, args []string, help io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(help)
		fs.Usage()
		return err
	}
	name := fs.Name()
	return fmt.Errorf("%s: %w (%s -h lists the flags)", strings.TrimPrefix(name, "connector "), err, name)
}

// newLogger builds the process logger: JSON for machines, console for people.
func newLogger(level, format string, out io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	terminal := false
	if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		terminal = true
	}
	if format == "console" || (format == "auto" && terminal) {
		// Colours only for a terminal: in a file or `docker logs` they are noise.
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: !terminal}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}
