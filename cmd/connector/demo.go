package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

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
	replicas := fs.Int("replicas", 1, "run the connector as this many replica processes (a fleet sharing the sessions; kill one to watch the takeover)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return flagError(err)
	}
	if *every <= 0 {
		return badUsage("-totals-every must be positive, got %v", *every)
	}
	if *replicas < 1 || *replicas > 9 {
		return badUsage("-replicas must be 1..9, got %d", *replicas)
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
	kindEnv := map[string]string{}
	for _, k := range kinds {
		if k.Demo == nil {
			continue
		}
		started, err := k.Demo.Start(simLog.With().Str("kind", k.Name()).Logger())
		if err != nil {
			return err
		}
		defer started.Stop() // after serve returned: the sessions are stopped by then
		sel.kinds = append(sel.kinds, k)
		sel.sessions = append(sel.sessions, started.Sessions...)
		for name, v := range started.Env {
			kindEnv[name] = v
		}
	}
	show := func(natsURL, httpAddr string, extra func() string) {
		header := demoHeader(redactURL(natsURL), httpAddr)
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
		opts := summaryOptions{Header: header, Interval: *every, Extra: extra}
		if terminal {
			opts = summaryOptions{Header: header, Interval: time.Second, Terminal: true, Logs: logs, Extra: extra}
		}
		if err := runSummary(ctx, nc, stdout, opts, filters...); err != nil {
			log.Error().Err(err).Msg("demo summary stopped")
		}
	}
	if *replicas > 1 {
		return runDemoFleet(ctx, cfg, *replicas, kindEnv, logOut, log, show)
	}
	return serve(ctx, cfg, ret, sel, log, func(_ *connector.Runtime, natsURL string) { show(natsURL, cfg.HTTPAddr, nil) })
}

// runDemoFleet is `connector demo -replicas n`: the embedded NATS server and
// the simulators here, the connector as n replica processes of this binary
// sharing the sessions, and the table with who owns what.
func runDemoFleet(ctx context.Context, cfg Config, n int, kindEnv map[string]string, logOut io.Writer,
	log zerolog.Logger, show func(natsURL, httpAddr string, extra func() string),
) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo -replicas runs this binary again: %w", err)
	}
	httpAddrs, err := replicaHTTPAddrs(cfg.HTTPAddr, n)
	if err != nil {
		return err
	}
	url, embedded, err := startNATS(cfg, log)
	if err != nil {
		return err
	}
	if embedded != nil {
		defer embedded.Stop()
	}
	procs := &replicaProcs{exe: exe, env: replicaEnv(url, kindEnv), http: httpAddrs, log: log, out: logOut, pids: make([]int, n)}
	var wg sync.WaitGroup
	defer wg.Wait() // every replica stopped (SIGTERM) before the server and simulators
	for i := range n {
		wg.Go(func() { procs.run(ctx, i) })
	}
	nc, err := connectNATS(url, cfg.NATSConfig, "demo leases", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	board := &leaseBoard{owners: map[string]string{}}
	wg.Go(func() { board.follow(ctx, nc, log) })
	show(url, httpAddrs[0], func() string { return board.render(procs) })
	return nil
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
