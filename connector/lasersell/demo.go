package lasersell

import (
	"fmt"
	"strings"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// Demo names: the session and the simulator's API key.
const (
	demoSession = "demo"
	demoAPIKey  = "demo-key"
)

// demo is LaserSell's part of `connector demo`: the simulator with its demo
// traffic, and one session with two wallets and a deadline.
func demo() *connector.Demo {
	nats := "nats -s " + connector.NATSURL + " "
	return &connector.Demo{
		Summary: fmt.Sprintf("LaserSell session %q", demoSession),
		Try: []string{
			nats + "sub 'lasersell." + demoSession + ".exit.>'",
			nats + "sub 'lasersell." + demoSession + ".event.>'",
			nats + "req lasersell." + demoSession + `.cmd.update_strategy '{"strategy":{"target_profit_pct":8,"stop_loss_pct":2,"trailing_stop_pct":1}}'`,
			nats + "req lasersell." + demoSession + ".cmd.ping '{}'",
			nats + "kv ls LASERSELL_POSITIONS",
			nats + "kv get CONNECTOR_STATUS lasersell." + demoSession,
		},
		Replay: "NATS_URL=" + connector.NATSURL + " go run ./cmd/connector replay --subject 'lasersell." + demoSession + ".exit.*' --since 1m --output exits.ndjson",
		Start:  startDemo,
	}
}

func startDemo(log zerolog.Logger) (connector.DemoStart, error) {
	simCfg := sim.DemoConfig()
	simCfg.APIKey = demoAPIKey
	srv := sim.New(simCfg, log)
	url, err := srv.Start("127.0.0.1:0")
	if err != nil {
		return connector.DemoStart{}, fmt.Errorf("LaserSell simulator: %w", err)
	}
	wallets := []string{"DemoWallet1111111111111111111111111111111111", "DemoWallet2222222222222222222222222222222222"}
	cfg := DefaultConfig()
	cfg.APIKey = Secret(demoAPIKey)
	cfg.URL = url
	cfg.Session = demoSession
	cfg.Wallets = wallets
	cfg.TargetProfitPct, cfg.StopLossPct, cfg.TrailingStopPct = 5, 1.5, 3
	cfg.DeadlineTimeoutSec = 45
	sessions, err := cfg.Sessions()
	if err != nil {
		srv.Close()
		return connector.DemoStart{}, err
	}
	env := map[string]string{
		"LASERSELL_API_KEY": demoAPIKey, "LASERSELL_URL": url, "LASERSELL_SESSION": demoSession,
		"LASERSELL_WALLETS": strings.Join(wallets, ","), "LASERSELL_TARGET_PROFIT_PCT": "5",
		"LASERSELL_STOP_LOSS_PCT": "1.5", "LASERSELL_TRAILING_STOP_PCT": "3", "LASERSELL_DEADLINE_TIMEOUT_SEC": "45",
	}
	return connector.DemoStart{Sessions: sessions, Env: env, Stop: srv.Close}, nil
}
