package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/replay"
)

const replayUsage = `usage: connector replay --subject FILTER [--subject FILTER...] [flags]

Reads JetStream history and writes it as NDJSON (one record per message, see
the replay package doc) to stdout or --output FILE, or re-publishes it under
--to PREFIX. It stops at --until/--end-seq or at the stream's last message when
the replay started. Connects like the connector: NATS_URL and the nats CLI
variables; without NATS_URL, the embedded server at CONNECTOR_NATS_LISTEN.

Speed: --speed max writes as fast as possible (the default for NDJSON);
--speed 1 keeps the original gaps between publish times (the default with
--to), --speed 10 makes them ten times shorter.

Flags:
`

// runReplay is `connector replay`.
func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector replay", flag.ContinueOnError)
	var filters stringList
	fs.Var(&filters, "subject", "subject filter, wildcards allowed; repeat for several (required)")
	stream := fs.String("stream", "", "stream to read (default: the one stream capturing the subjects)")
	since := fs.String("since", "", "start at this publish time: RFC 3339, or a duration such as 2h meaning that long ago")
	until := fs.String("until", "", "stop after this publish time: RFC 3339 or a duration ago")
	startSeq := fs.Uint64("start-seq", 0, "start at this stream sequence")
	endSeq := fs.Uint64("end-seq", 0, "stop after this stream sequence")
	output := fs.String("output", "", "write NDJSON to this file (default stdout)")
	to := fs.String("to", "", "re-publish to PREFIX.<original subject> instead of writing NDJSON")
	speed := fs.String("speed", "", "max, or a factor such as 1 or 10 (default max for NDJSON, 1 with --to)")
	progress := fs.String("progress", "auto", "progress bar on stderr: auto (when stderr is a terminal), on or off")
	connectTimeout := fs.Duration("connect-timeout", 10*time.Second, "give up when NATS is not reachable within this time")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), replayUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return badUsage("replay: unexpected argument %q (flags only)", fs.Arg(0))
	}

	opts := replay.Options{Subjects: filters, Stream: *stream, StartSeq: *startSeq, EndSeq: *endSeq, Prefix: *to, Kinds: subjectKinds(builtinKinds())}
	now := time.Now()
	var err error
	if opts.Since, err = parseWhen(*since, now); err != nil {
		return badUsage("replay: --since: %v", err)
	}
	if opts.Until, err = parseWhen(*until, now); err != nil {
		return badUsage("replay: --until: %v", err)
	}
	if *to != "" && *output != "" {
		return badUsage("replay: --to and --output exclude each other")
	}
	if *to == "" && flagGiven(fs, "to") {
		return badUsage("replay: --to needs a prefix; an empty one would re-publish into the live subjects")
	}
	if *speed == "" {
		*speed = "max"
		if *to != "" {
			*speed = "1"
		}
	}
	if opts.Speed, err = replay.ParseSpeed(*speed); err != nil {
		return badUsage("replay: --speed: %v", err)
	}
	showBar, err := progressWanted(*progress, *output == "" && *to == "", stdout, stderr)
	if err != nil {
		return err
	}
	if *to == "" {
		opts.Output = stdout // replaced by the file below, after connecting
	}
	if err := opts.Validate(); err != nil {
		return badUsage("replay: %v", err)
	}

	js, closeNATS, err := replayConnect(ctx, *connectTimeout, stderr)
	if errors.Is(err, context.Canceled) {
		return errInterrupted // Ctrl-C while connecting: nothing replayed
	}
	if err != nil {
		return err
	}
	defer closeNATS()

	dest := "stdout"
	if *to != "" {
		dest = *to + ".>"
	}
	var export *exportFile
	if *output != "" {
		if export, err = openExport(*output); err != nil {
			return fmt.Errorf("replay: output: %w", err)
		}
		opts.Output, dest = export, *output
	}
	if showBar {
		opts.Progress = replay.NewBar(stderr, 250*time.Millisecond).Update
	}
	sum, err := replay.Run(ctx, js, opts)
	if export != nil {
		if err != nil && !sum.Canceled {
			export.discard()
		} else if dest, err = export.commit(sum.Canceled); err != nil {
			return fmt.Errorf("replay: output: %w", err)
		} else if sum.Canceled {
			err = context.Canceled
		}
	}
	switch {
	case err == nil:
		fmt.Fprintln(stderr, replaySummary(sum, dest))
		return nil
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, replaySummary(sum, dest))
		return errInterrupted
	case errors.Is(err, replay.ErrRefused):
		return badUsage("replay: --to: %v", err)
	}
	return fmt.Errorf("replay: %w", err)
}

// errInterrupted ends a command stopped by Ctrl-C before it finished its
// work: the process exits 130, like a shell, so `replay ... && upload` does
// not upload a partial file.
var errInterrupted = errors.New("interrupted")

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// parseWhen reads an RFC 3339 time or a duration meaning that long before now;
// empty is the zero time (an open end).
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2006-01-02T15:04:05Z) nor a duration (90s, 15m, 2h)", s)
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("duration %q must be positive (it means that long ago)", s)
	}
	return now.Add(-d), nil
}

// progressWanted decides on the progress bar. auto shows it when stderr is a
// terminal, unless the records themselves go to that terminal.
func progressWanted(mode string, toStdout bool, stdout, stderr io.Writer) (bool, error) {
	switch mode {
	case "on":
		return true, nil
	case "off":
		return false, nil
	case "auto":
		if !isTerminal(stderr) {
			return false, nil
		}
		return !(toStdout && isTerminal(stdout)), nil
	}
	return false, badUsage("replay: --progress=%q must be auto, on or off", mode)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// replayConnect connects like the connector does: NATS_URL and the nats CLI
// variables, or the embedded server's listen address when NATS_URL is empty.
func replayConnect(ctx context.Context, timeout time.Duration, stderr io.Writer) (jetstream.JetStream, func(), error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, nil, err
	}
	url := cfg.NATSConfig.URL
	if url == "" {
		url = "nats://" + cfg.EmbeddedConfig.Listen
	}
	// Connection trouble is worth a line on stderr; routine chatter is not.
	log := newLogger("warn", cfg.LogFormat, stderr)
	conn, err := connectNATS(url, cfg.NATSConfig, "replay", log)
	if err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := waitConnected(wctx, conn, log); err != nil {
		conn.Close()
		switch {
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded):
			return nil, nil, fmt.Errorf("replay: NATS at %s: %w", redactURL(url), err) // e.g. authorization violation
		}
		return nil, nil, fmt.Errorf("replay: NATS at %s not reachable within %s", redactURL(url), timeout)
	}
	js, err := jetstream.New(conn)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("replay: jetstream: %w", err)
	}
	return js, conn.Close, nil
}

// replaySummary is the line printed to stderr when a replay ends.
func replaySummary(s replay.Summary, dest string) string {
	switch {
	case s.Canceled:
		return fmt.Sprintf("replay: interrupted: %d messages from %s written to %s, last seq %d", s.Written, s.Stream, dest, s.LastSeq)
	case s.Written == 0:
		return fmt.Sprintf("replay: no matching messages in %s", orDash(s.Stream))
	}
	return fmt.Sprintf("replay: %d messages from %s (seq %d..%d) written to %s", s.Written, s.Stream, s.FirstSeq, s.LastSeq, dest)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
