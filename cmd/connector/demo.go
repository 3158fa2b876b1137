package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jetbridge/connector/connector"
)

// runDemo runs embedded NATS, the LaserSell simulator, a two-robot simulated
// cell and both sources until ctx ends, printing a live per-subject table
// redrawn each second on a terminal, else a plain line of totals every
// -totals-every (when messages arrived).
func runDemo(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("connector demo", flag.ContinueOnError)
	duration := fs.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	quiet := fs.Bool("no-table", false, "do not draw the live table (logs only)")
	every := fs.Duration("totals-every", 10*time.Second, "when stdout is not a terminal: print a line of totals this often")
	if err := parseFlags(fs, args, stdout); err != nil {
		return flagError(err)
	}
	if *every <= 0 {
		return badUsage("-totals-every must be positive, got %v", *every)
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	kinds := builtinKinds()
	ret, err := retention(kinds)
	if err != nil {
		return err
	}
	if _, set := os.LookupEnv("LOG_LEVEL"); !set {
		cfg.LogLevel = "warn" // keep the table readable; LOG_LEVEL=info shows everything
	}
	// A table redrawn in a terminal clears the screen each second, wiping log
	// lines written to the same terminal: those are drawn under the table.
	terminal := !*quiet && isTerminal(stdout) && isTerminal(os.Stderr)
	logOut := io.Writer(os.Stderr)
	var logs *logTail
	if terminal {
		logs = newLogTail(os.Stderr, 8)
		defer logs.release() // also when serve fails before the first frame
		logOut = logs
	}
	log := newLogger(cfg.LogLevel, "console", logOut)
	if _, set := os.LookupEnv("CONNECTOR_NATS_STORE_DIR"); !set && cfg.NATSConfig.URL == "" {
		dir, err := os.MkdirTemp("", "connector-demo-*")
		if err != nil {
			return fmt.Errorf("demo store directory: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.EmbeddedConfig.StoreDir = dir
	}
	simLog := log.With().Str("component", "sim").Logger()
	sel := selection{}
	for _, k := range kinds {
		if k.Demo == nil {
			continue
		}
		sessions, stop, err := k.Demo.Start(simLog.With().Str("kind", k.Name()).Logger())
		if err != nil {
			return err
		}
		defer stop() // after serve returned: the sessions are stopped by then
		sel.kinds = append(sel.kinds, k)
		sel.sessions = append(sel.sessions, sessions...)
	}
	ready := func(rt *connector.Runtime, natsURL string) {
		header := demoHeader(redactURL(natsURL), cfg.HTTPAddr)
		if *quiet {
			fmt.Fprint(stdout, header)
			return
		}
		if logs != nil {
			defer logs.release() // when the table stops, log lines go straight to stderr
		}
		nc, err := connectNATS(natsURL, cfg.NATSConfig, "demo summary", log)
		if err != nil {
			log.Error().Err(err).Msg("demo summary cannot connect")
			return
		}
		defer nc.Close()
		var filters []string
		for _, k := range sel.kinds {
			filters = append(filters, k.Name()+".>")
		}
		opts := summaryOptions{Header: header, Interval: *every}
		if terminal {
			opts = summaryOptions{Header: header, Interval: time.Second, Terminal: true, Logs: logs}
		}
		if err := runSummary(ctx, nc, stdout, opts, filters...); err != nil {
			log.Error().Err(err).Msg("demo summary stopped")
		}
	}
	return serve(ctx, cfg, ret, sel, log, ready)
}

// redactURL hides credentials embedded in NATS URLs (nats://user:pass@host).
func redactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("redacted")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// demoHeader is what the demo prints first: what runs, and commands to paste.
func demoHeader(natsURL, httpAddr string) string {
	var summaries, try, replays []string
	for _, k := range builtinKinds() {
		if d := k.Demo; d != nil {
			summaries = append(summaries, d.Summary)
			try = append(try, d.Try...)
			if d.Replay != "" {
				replays = append(replays, d.Replay)
			}
		}
	}
	try = append(try, "nats -s "+connector.NATSURL+" stream ls", "nats -s "+connector.NATSURL+" micro ls")
	var b strings.Builder
	fmt.Fprintf(&b, "connector demo: NATS %s, %s. Ctrl-C stops.\n\n", natsURL, strings.Join(summaries, ", "))
	b.WriteString("Paste into another terminal (nats CLI):\n")
	for _, line := range try {
		b.WriteString("  " + strings.ReplaceAll(line, connector.NATSURL, natsURL) + "\n")
	}
	if len(replays) > 0 {
		b.WriteString("Replay the last minute of exit signals to a file:\n")
		for _, line := range replays {
			b.WriteString("  " + strings.ReplaceAll(line, connector.NATSURL, natsURL) + "\n")
		}
	}
	if httpAddr != "" {
		b.WriteString("Health, status and metrics (CONNECTOR_HTTP_ADDR):\n")
		for _, path := range []string{"/readyz", "/status", "/metrics | grep connector_events_by_type_total"} {
			fmt.Fprintf(&b, "  curl -s http://%s%s\n", httpAddr, path)
		}
	}
	return b.String()
}
