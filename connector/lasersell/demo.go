package lasersell

import (
	"fmt"

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

func startDemo(log zerolog.Logger) ([]connector.Session, func(), error) {
	simCfg := sim.DemoConfig()
	simCfg.APIKey = demoAPIKey
	srv := sim.New(simCfg, log)
	url, err := srv.Start("127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("LaserSell simulator: %w", err)
	}
	cfg := DefaultConfig()
	cfg.APIKey = Secret(demoAPIKey)
	cfg.URL = url
	cfg.Session = demoSession
	cfg.Wallets = []string{"DemoWallet1111111111111111111111111111111111", "DemoWallet2222222222222222222222222222222222"}
	cfg.TargetProfitPct, cfg.StopLossPct, cfg.TrailingStopPct = 5, 1.5, 3
	cfg.DeadlineTimeoutSec = 45
	sessions, err := cfg.Sessions()
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	return sessions, srv.Close, nil
}
