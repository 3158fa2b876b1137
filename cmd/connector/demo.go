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
	"github.com/jetbridge/connector/connector/lasersell"
	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/connector/openstream"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
)

// Demo names: the LaserSell session and the simulated robot cell.
const (
	demoSession = "demo"
	demoAPIKey  = "demo-key"
	demoFastArm = "arm1" // MONITOR joint_states at 500 Hz, CONTROL allowed for trajectories
	demoSlowArm = "arm2" // MONITOR po_cur at 10 Hz, CONTROL disabled
)

// runDemo runs embedded NATS, the LaserSell simulator, a two-robot simulated
// cell and both sources, printing a live per-subject table until ctx ends.
func runDemo(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("connector demo", flag.ContinueOnError)
	duration := fs.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	quiet := fs.Bool("no-table", false, "do not draw the live table (logs only)")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
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
	log := newLogger(cfg.LogLevel, "console", os.Stderr)
	if _, set := os.LookupEnv("CONNECTOR_NATS_STORE_DIR"); !set && cfg.NATSConfig.URL == "" {
		dir, err := os.MkdirTemp("", "connector-demo-*")
		if err != nil {
			return fmt.Errorf("demo store directory: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.EmbeddedConfig.StoreDir = dir
	}
	simLog := log.With().Str("component", "sim").Logger()

	ls := lssim.DemoConfig()
	ls.APIKey = demoAPIKey
	lsSrv := lssim.New(ls, simLog)
	lsURL, err := lsSrv.Start("127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("LaserSell simulator: %w", err)
	}
	defer lsSrv.Close()

	robots := map[string]string{}
	for _, name := range []string{demoFastArm, demoSlowArm} {
		rc := ossim.DefaultConfig()
		srv := ossim.New(rc, simLog.With().Str("robot", name).Logger())
		addr, err := srv.Start("127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("robot simulator %s: %w", name, err)
		}
		defer srv.Close()
		robots[name] = addr
	}

	lcfg := lasersell.DefaultConfig()
	lcfg.APIKey = lasersell.Secret(demoAPIKey)
	lcfg.URL = lsURL
	lcfg.Session = demoSession
	lcfg.Wallets = []string{"DemoWallet1111111111111111111111111111111111", "DemoWallet2222222222222222222222222222222222"}
	lcfg.TargetProfitPct, lcfg.StopLossPct, lcfg.TrailingStopPct = 5, 1.5, 3
	lcfg.DeadlineTimeoutSec = 45
	if err := lcfg.Validate(); err != nil {
		return err
	}

	ocfg := openstream.Defaults()
	ocfg.Robots = fmt.Sprintf("%s=%s,%s=%s", demoFastArm, robots[demoFastArm], demoSlowArm, robots[demoSlowArm])
	ocfg.Monitors = fmt.Sprintf("%s/joints=/project/robot/joints/joint_states@2ms,%s/pose=/project/robot/po_cur@100ms", demoFastArm, demoSlowArm)
	ocfg.ControlAllow = demoFastArm + "=/project/robot/trajectory/*,/project/robot/motor_on,/project/robot/motor_off"
	if err := ocfg.Validate(); err != nil {
		return err
	}

	cfg.Sources = "lasersell,openstream"
	robotSessions, err := ocfg.Sessions()
	if err != nil {
		return err
	}
	sel := selection{kinds: kinds, sessions: append([]connector.Session{lasersell.NewSession(lcfg)}, robotSessions...)}
	ready := func(rt *connector.Runtime, natsURL string) {
		header := demoHeader(redactURL(natsURL), cfg.HTTPAddr)
		if *quiet {
			fmt.Fprint(stdout, header)
			return
		}
		nc, err := connectNATS(natsURL, cfg.NATSConfig, "demo summary", log)
		if err != nil {
			log.Error().Err(err).Msg("demo summary cannot connect")
			return
		}
		defer nc.Close()
		if err := runSummary(ctx, nc, stdout, header, time.Second, "lasersell.>", "openstream.>"); err != nil {
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

func demoHeader(natsURL, httpAddr string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "connector demo: NATS %s, LaserSell session %q, robots %s (500 Hz) and %s. Ctrl-C stops.\n\n", natsURL, demoSession, demoFastArm, demoSlowArm)
	b.WriteString("Paste into another terminal (nats CLI):\n")
	for _, line := range []string{
		fmt.Sprintf("nats -s %s sub 'lasersell.%s.exit.>'", natsURL, demoSession),
		fmt.Sprintf("nats -s %s sub 'lasersell.%s.event.>'", natsURL, demoSession),
		fmt.Sprintf("nats -s %s req lasersell.%s.cmd.update_strategy '{\"strategy\":{\"target_profit_pct\":8,\"stop_loss_pct\":2,\"trailing_stop_pct\":1}}'", natsURL, demoSession),
		fmt.Sprintf("nats -s %s req lasersell.%s.cmd.ping '{}'", natsURL, demoSession),
		fmt.Sprintf("nats -s %s sub 'openstream.%s.data.joints' --count 3", natsURL, demoFastArm),
		fmt.Sprintf("nats -s %s req openstream.%s.cmd.control '{\"url\":\"/project/robot/trajectory/joint_traject_insert_point\",\"method\":\"POST\",\"body\":{\"interval\":0.005,\"time_from_start\":-1,\"look_ahead_time\":0.004,\"point\":[10,20,30,0,45,0]}}'", natsURL, demoFastArm),
		fmt.Sprintf("nats -s %s req openstream.%s.cmd.monitor '{\"name\":\"state\",\"url\":\"/project/robot/motor_on_state\",\"period_ms\":500}'", natsURL, demoSlowArm),
		fmt.Sprintf("nats -s %s stream ls", natsURL),
		fmt.Sprintf("nats -s %s kv ls LASERSELL_POSITIONS", natsURL),
		fmt.Sprintf("nats -s %s kv get CONNECTOR_STATUS lasersell.%s", natsURL, demoSession),
		fmt.Sprintf("nats -s %s micro ls", natsURL),
	} {
		b.WriteString("  " + line + "\n")
	}
	b.WriteString("Replay the last minute of exit signals to a file:\n")
	fmt.Fprintf(&b, "  NATS_URL=%s connector replay --subject 'lasersell.%s.exit.*' --since 1m --output exits.ndjson\n", natsURL, demoSession)
	if httpAddr != "" {
		b.WriteString("Health, status and metrics (CONNECTOR_HTTP_ADDR):\n")
		for _, path := range []string{"/readyz", "/status", "/metrics | grep connector_events_by_type_total"} {
			fmt.Fprintf(&b, "  curl -s http://%s%s\n", httpAddr, path)
		}
	}
	return b.String()
}
