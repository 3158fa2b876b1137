package lasersell

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// Every invalid command is refused with its code, and nothing reaches the
// server.
func TestInvalidCommandsRefused(t *testing.T) {
	lim := sim.DefaultLimits()
	lim.MaxWalletsPerSession = 2
	lim.MaxWatchWalletsPerSession = 1
	s := startSim(t, sim.Config{Limits: lim})
	r := run(t, testConfig(s.URL()), "")
	r.waitConnected()
	waitFrame(t, s, 1, typeConfigure, nil)
	before := commandFrames(s)

	w := func(ws ...string) string { b, _ := json.Marshal(ws); return string(b) }
	good := `"strategy":{"target_profit_pct":10}`
	cases := []struct{ cmd, body, code string }{
		{typeConfigure, `not json`, connector.CodeInvalidJSON},
		{typeConfigure, `[1]`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,` + good + `,"surprise":1}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":"` + walletA + `",` + good + `}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,"wallet_pubkey":"` + walletA + `",` + good + `}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `}`, CodeInvalidStrategy},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,"strategy":{}}`, CodeInvalidStrategy},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,"strategy":{"stop_loss_pct":-1}}`, CodeInvalidStrategy},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,"strategy":{"stop_loss_pct":1e999}}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,"strategy":{"target_profit_pct":1,"take_profit_levels":[{"profit_pct":5,"sell_pct":150}]}}`, CodeInvalidStrategy},
		{typeConfigure, `{"wallet_pubkeys":[],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":[""],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":["a b"],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA, walletA) + `,` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA, walletB, walletC) + `,` + good + `}`, CodeTooManyWallets},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,` + good + `,"send_mode":""}`, CodeInvalidSendMode},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,` + good + `,"watch_wallets":[{"pubkey":""}]}`, CodeInvalidWatchWallets},
		{typeConfigure, `{"wallet_pubkeys":` + w(walletA) + `,` + good + `,"watch_wallets":[{"pubkey":"x"},{"pubkey":"y"}]}`, CodeTooManyWatchWallets},
		{typeUpdateStrategy, `{}`, CodeInvalidStrategy},
		{typeUpdateStrategy, `{"strategy":{"target_profit_pct":0,"stop_loss_pct":0,"trailing_stop_pct":0}}`, CodeInvalidStrategy},
		{typeUpdateStrategy, `{"strategy":{"trailing_stop_pct":-0.5}}`, CodeInvalidStrategy},
		{typeUpdateStrategy, `{"strategy":{"target_profit_pct":1,"breakeven_trail_pct":-2}}`, CodeInvalidStrategy},
		{typeUpdateStrategy, `{"strategy":{"target_profit_pct":"high"}}`, connector.CodeInvalidJSON},
		{typeUpdateWallets, `{}`, CodeInvalidWallets},
		{typeUpdateWallets, `{"wallet_pubkeys":` + w(walletA, walletB, walletC) + `}`, CodeTooManyWallets},
		{typeUpdateWatchWallets, `{}`, CodeInvalidWatchWallets},
		{typeUpdateWatchWallets, `{"watch_wallets":[{"pubkey":"x","auto_buy":{"wallet_pubkey":"","amount_quote_units":1}}]}`, CodeInvalidWatchWallets},
		{typeUpdateWatchWallets, `{"watch_wallets":[{"pubkey":"x"},{"pubkey":"x"}]}`, CodeInvalidWatchWallets},
		{typeUpdateWatchWallets, `{"watch_wallets":[{"pubkey":"x"},{"pubkey":"y"}]}`, CodeTooManyWatchWallets},
		{typeUpdatePositionStrategy, `{"strategy":{"target_profit_pct":1}}`, CodeInvalidPosition},
		{typeUpdatePositionStrategy, `{"position_id":1}`, CodeInvalidStrategy},
		{typeUpdatePositionStrategy, `{"position_id":-1,"strategy":{"target_profit_pct":1}}`, connector.CodeInvalidJSON},
		{typeUpdatePositionStrategy, `{"position_id":999,"strategy":{"target_profit_pct":1}}`, CodeUnknownPosition},
		{typeClosePosition, `{}`, CodeInvalidPositionSelector},
		{typeClosePosition, `{"position_id":1,"token_account":"TA"}`, CodeInvalidPositionSelector},
		{typeClosePosition, `{"token_account":""}`, CodeInvalidPositionSelector},
		{typeClosePosition, `{"position_id":1,"slippage_bps":10}`, connector.CodeInvalidJSON},
		{typeRequestExitSignal, `{}`, CodeInvalidPositionSelector},
		{typeRequestExitSignal, `{"position_id":1,"token_account":"TA"}`, CodeInvalidPositionSelector},
		{typeRequestExitSignal, `{"position_id":1,"slippage_bps":70000}`, CodeInvalidSlippage},
		{typeRequestExitSignal, `{"position_id":1,"slippage_bps":-1}`, CodeInvalidSlippage},
		{typeRequestExitSignal, `{"position_id":1,"slippage_bps":1.5}`, CodeInvalidSlippage},
		{typeRequestExitSignal, `{"position_id":"1"}`, connector.CodeInvalidJSON},
		{typePing, `{"extra":true}`, connector.CodeInvalidJSON},
	}
	for _, tc := range cases {
		rep := r.request(tc.cmd, tc.body)
		if rep.OK || rep.Error == nil || rep.Error.Code != tc.code {
			t.Errorf("%s %s: reply %+v, want refusal %s", tc.cmd, tc.body, rep.Raw, tc.code)
		} else if rep.Error.Message == "" {
			t.Errorf("%s %s: refusal without a message", tc.cmd, tc.body)
		}
	}

	// Valid commands still work, and are the only new frames upstream.
	id := s.OpenPosition(walletA, mintA, 1_000_000)
	ids := strconv.FormatUint(id, 10)
	connectortest.Eventually(t, wait, "position tracked", func() bool { return r.position(ids) != nil })
	rep := r.mustOK(typeRequestExitSignal, `{"position_id":`+ids+`,"slippage_bps":250}`)
	if sent, _ := rep.Raw["sent"].(map[string]any); sent["type"] != typeRequestExitSignal || sent["slippage_bps"] != float64(250) {
		t.Fatalf("reply %v", rep.Raw)
	}
	r.fetch(subjects.StreamLaserSellExit, "lasersell.t1.exit."+walletA, 1)
	r.mustOK(typeUpdatePositionStrategy, `{"position_id":`+ids+`,"strategy":{"stop_loss_pct":3}}`)
	r.mustOK(typeClosePosition, `{"position_id":`+ids+`}`)
	connectortest.Eventually(t, wait, "position closed", func() bool { return r.position(ids) == nil })

	after := commandFrames(s)
	if after[typeConfigure] != before[typeConfigure] || after[typeUpdateStrategy] != 0 || after[typeUpdateWallets] != 0 ||
		after[typeUpdateWatchWallets] != 0 || after[typeRequestExitSignal] != 1 || after[typeClosePosition] != 1 ||
		after[typeUpdatePositionStrategy] != 1 {
		t.Fatalf("frames upstream: before %v, after %v", before, after)
	}
	for _, f := range s.Received() {
		if f.Type == "" && f.Opcode == 1 {
			t.Fatalf("a non-command text frame reached the server: %q", f.Raw)
		}
	}
	// Every command, refused or not, is in the audit stream.
	if n := r.env.WaitCount(subjects.StreamAudit, "lasersell.t1.audit.>", uint64(len(cases)+3), wait); n != uint64(len(cases)+3) {
		t.Fatalf("audit records: %d, want %d", n, len(cases)+3)
	}
}

// While disconnected, state-changing commands update the desired state and
// are re-sent on connect; one-shot commands are refused with not_connected.
func TestCommandsWhileDisconnected(t *testing.T) {
	s := startSim(t, sim.Config{})
	s.SetRefuseStatus(http.StatusServiceUnavailable)
	cfg := testConfig(s.URL())
	cfg.Wallets, cfg.TargetProfitPct, cfg.StopLossPct = nil, 0, 0
	r := run(t, cfg, "")

	// Status shows the reconnect schedule.
	connectortest.Eventually(t, wait, "reconnecting status", func() bool {
		st := r.status()
		attempt, _ := st["attempt"].(float64)
		return st != nil && st["state"] == "reconnecting" && st["backoff_ms"] != nil && attempt >= 5 &&
			strings.Contains(st["reason"].(string), "HTTP 503")
	})

	for _, cmd := range []string{typeUpdateWallets, typeUpdateStrategy, typeUpdateWatchWallets} {
		body := map[string]string{
			typeUpdateWallets:      `{"wallet_pubkeys":["` + walletA + `"]}`,
			typeUpdateStrategy:     `{"strategy":{"stop_loss_pct":1}}`,
			typeUpdateWatchWallets: `{"watch_wallets":[]}`,
		}[cmd]
		if rep := r.request(cmd, body); rep.OK || rep.Error.Code != CodeNotConfigured {
			t.Fatalf("%s before any configure: %+v", cmd, rep.Raw)
		}
	}
	rep := r.mustOK(typeConfigure, `{"wallet_pubkeys":["`+walletA+`"],"strategy":{"stop_loss_pct":10}}`)
	if rep.Raw["applied"] != false || rep.Raw["pending"] != "reconnect" || rep.Raw["stored"] == nil {
		t.Fatalf("configure while disconnected: %v", rep.Raw)
	}
	rep = r.mustOK(typeUpdateWallets, `{"wallet_pubkeys":["`+walletA+`","`+walletB+`"]}`)
	if rep.Raw["applied"] != false || rep.Raw["pending"] != "reconnect" {
		t.Fatalf("update_wallets while disconnected: %v", rep.Raw)
	}
	for _, c := range []struct{ cmd, body string }{
		{typeRequestExitSignal, `{"position_id":1}`},
		{typeClosePosition, `{"token_account":"TA"}`},
		{typePing, ``},
	} {
		if rep := r.request(c.cmd, c.body); rep.OK || rep.Error.Code != CodeNotConnected {
			t.Fatalf("%s while disconnected: %+v", c.cmd, rep.Raw)
		}
	}
	if got := wallets(r.desired()); got != walletA+","+walletB {
		t.Fatalf("desired wallets in KV: %s", got)
	}

	s.SetRefuseStatus(0)
	r.waitConnected()
	_, body := waitFrame(t, s, 1, typeConfigure, nil)
	if wallets(body) != walletA+","+walletB {
		t.Fatalf("configure on connect: %v", body)
	}
	if got := commandFrames(s); len(got) != 1 {
		t.Fatalf("only the merged configure may reach the server: %v", got)
	}

	// The failed attempts grew the backoff to its cap; a healthy session
	// (hello_ok, alive for HealthyAfter) resets it.
	time.Sleep(2 * cfg.HealthyAfter)
	s.DropConnections()
	var before, after []float64 // backoffs before the first connected status, and after it
	connectortest.Eventually(t, wait, "the reconnect after the drop in the status stream", func() bool {
		before, after = nil, nil
		connected := false
		for _, m := range r.statuses() {
			var st map[string]any
			_ = json.Unmarshal(m.Data(), &st)
			switch {
			case st["state"] == "connected":
				connected = true
			case st["state"] == "reconnecting" && connected:
				after = append(after, st["backoff_ms"].(float64))
			case st["state"] == "reconnecting":
				before = append(before, st["backoff_ms"].(float64))
			}
		}
		return len(after) > 0
	})
	if len(before) < 5 || before[0] != 10 || before[1] != 20 || before[2] != 40 || before[3] != 50 || before[4] != 50 {
		t.Fatalf("backoffs %v: want 10, 20, 40, 50, 50, ...", before)
	}
	if after[0] != 10 {
		t.Fatalf("backoff after a healthy session %v: the schedule must reset to 10", after)
	}
}

// A refused upgrade (bad key) is reported without the key, and retried.
func TestUnauthorizedIsReportedWithoutTheKey(t *testing.T) {
	s := startSim(t, sim.Config{})
	s.SetAPIKey("another-key")
	r := run(t, testConfig(s.URL()), "")
	connectortest.Eventually(t, wait, "401 status", func() bool {
		st := r.status()
		reason, _ := st["reason"].(string)
		return strings.Contains(reason, "HTTP 401")
	})
	s.SetAPIKey(testKey)
	r.waitConnected()
	r.mustOK(typePing, `{}`)

	// The key appears in no stored message and no KV entry.
	for _, stream := range []string{subjects.StreamLaserSellEvents, subjects.StreamAudit} {
		for _, m := range r.env.Fetch(stream, ">", 1000, 500*time.Millisecond) {
			if strings.Contains(string(m.Data()), testKey) || strings.Contains(m.Headers().Get(subjects.HeaderType), testKey) {
				t.Fatalf("API key in %s: %s", m.Subject(), m.Data())
			}
		}
	}
	for _, bucket := range []string{subjects.BucketDesired, subjects.BucketStatus, subjects.BucketPositions} {
		kv, err := r.env.JS.KeyValue(context.Background(), bucket)
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := kv.Keys(context.Background())
		for _, k := range keys {
			e, err := kv.Get(context.Background(), k)
			if err == nil && strings.Contains(string(e.Value()), testKey) {
				t.Fatalf("API key in KV %s %s", bucket, k)
			}
		}
	}
}
