package sim_test

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/lasersell/sim"
)

func Example() {
	cfg := sim.DefaultConfig()
	cfg.APIKey = "secret"
	s := sim.New(cfg, zerolog.Nop())
	defer s.Close()
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		panic(err)
	}
	id := s.OpenPosition("Wallet1111111111111111111111111111111111111", "Mint11111111111111111111111111111111111pump", 1_000_000)

	ws, _, err := websocket.DefaultDialer.Dial(s.URL(), http.Header{"X-Api-Key": {"secret"}})
	if err != nil {
		panic(err)
	}
	defer ws.Close()
	_ = ws.WriteJSON(map[string]any{"type": "configure",
		"wallet_pubkeys": []string{"Wallet1111111111111111111111111111111111111"},
		"strategy":       map[string]any{"target_profit_pct": 50, "stop_loss_pct": 20}})
	_ = ws.WriteJSON(map[string]any{"type": "request_exit_signal", "position_id": id})
	for range 4 {
		var m struct {
			Type   string `json:"type"`
			Reason string `json:"reason"`
		}
		_ = ws.ReadJSON(&m)
		fmt.Println(strings.TrimSpace(m.Type + " " + m.Reason))
	}
	// Output:
	// hello_ok
	// balance_update
	// position_opened
	// exit_signal_with_tx sell_now
}
