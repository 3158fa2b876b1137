package lasersell

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// Both hello orders work: the server's hello_ok right after the upgrade, and
// hello_ok only after the client's configure; with and without a configure
// known at connect time.
func TestBothHelloOrders(t *testing.T) {
	for _, order := range []sim.HelloOrder{sim.HelloServerFirst, sim.HelloAfterConfigure} {
		t.Run(string(order), func(t *testing.T) {
			// An older server's limits, plus a field nobody knows yet.
			s := startSim(t, sim.Config{HelloOrder: order, LegacyLimits: true, ExtraLimits: map[string]uint64{"max_future_thing": 3}})
			r := run(t, testConfig(s.URL()), "")
			st := r.waitConnected()
			limits, _ := st["detail"].(map[string]any)["limits"].(map[string]any)
			if limits["max_future_thing"] != float64(3) || limits["max_wallets_per_session"] != float64(10) {
				t.Fatalf("status detail limits %v", limits)
			}
			_, body := waitFrame(t, s, 1, typeConfigure, nil)
			if wallets(body) != walletA {
				t.Fatalf("configure sent: %v", body)
			}
			// The session is usable: a one-shot command round-trips.
			rep := r.mustOK(typePing, `{}`)
			if rtt, _ := rep.Raw["rtt_ms"].(float64); rtt <= 0 {
				t.Fatalf("ping reply %v: want rtt_ms", rep.Raw)
			}
		})
		t.Run(string(order)+"/configure-later", func(t *testing.T) {
			s := startSim(t, sim.Config{HelloOrder: order})
			cfg := testConfig(s.URL())
			cfg.Wallets, cfg.TargetProfitPct, cfg.StopLossPct = nil, 0, 0
			r := run(t, cfg, "")
			connectortest.Eventually(t, wait, "socket open", func() bool { return s.ActiveSessions() == 1 })
			rep := r.mustOK(typeConfigure, `{"wallet_pubkeys":["`+walletB+`"],"strategy":{"stop_loss_pct":10}}`)
			if rep.Raw["applied"] != true {
				t.Fatalf("configure on an open socket: %v", rep.Raw)
			}
			r.waitConnected()
			if _, body := waitFrame(t, s, 1, typeConfigure, nil); wallets(body) != walletB {
				t.Fatalf("configure sent: %v", body)
			}
		})
	}
}

// The latest desired state (a configure received over NATS after start, then
// updates) is what a forced reconnect and a connector restart re-send; KV
// wins over the environment at restart.
func TestDesiredStateSurvivesReconnectAndRestart(t *testing.T) {
	s := startSim(t, sim.Config{HelloOrder: sim.HelloAlternate})
	cfg := testConfig(s.URL())
	r := run(t, cfg, "")
	r.waitConnected()
	waitFrame(t, s, 1, typeConfigure, nil)

	rep := r.mustOK(typeConfigure, `{"wallet_pubkeys":["`+walletB+`"],"strategy":{"target_profit_pct":30,"stop_loss_pct":5},"send_mode":"rpc","tip_lamports":1000}`)
	if rep.Raw["applied"] != true {
		t.Fatalf("configure reply %v", rep.Raw)
	}
	sent, _ := rep.Raw["sent"].(map[string]any)
	if sent["type"] != "configure" || wallets(sent) != walletB {
		t.Fatalf("reply must say what was sent: %v", rep.Raw)
	}
	r.mustOK(typeUpdateWallets, `{"wallet_pubkeys":["`+walletB+`","`+walletC+`"]}`)
	r.mustOK(typeUpdateStrategy, `{"strategy":{"target_profit_pct":40,"trailing_stop_pct":3}}`)
	r.mustOK(typeUpdateWatchWallets, `{"watch_wallets":[{"pubkey":"`+walletA+`","mirror_sell":true}]}`)
	waitFrame(t, s, 1, typeUpdateWatchWallets, nil)

	checkMerged := func(body map[string]any, where string) {
		t.Helper()
		strat, _ := body["strategy"].(map[string]any)
		watch, _ := body["watch_wallets"].([]any)
		if wallets(body) != walletB+","+walletC || strat["target_profit_pct"] != float64(40) ||
			strat["trailing_stop_pct"] != float64(3) || strat["stop_loss_pct"] != float64(0) ||
			body["send_mode"] != "rpc" || body["tip_lamports"] != float64(1000) || len(watch) != 1 {
			t.Fatalf("%s: configure %v is not the merged latest state", where, body)
		}
	}
	checkMerged(r.desired(), "KV")

	// Forced reconnect: connection 2 (after-configure order under "alternate").
	s.DropConnections()
	_, body := waitFrame(t, s, 2, typeConfigure, nil)
	checkMerged(body, "after reconnect")
	r.waitConnected()

	// Restart: new runtime and source on the same JetStream directory; the
	// environment still says walletA, KV wins. Connection 3: server-first.
	r.shutdown()
	r2 := run(t, cfg, r.env.StoreDir)
	_, body = waitFrame(t, s, 3, typeConfigure, nil)
	checkMerged(body, "after restart")
	r2.waitConnected()

	// Nothing but configures and the updates above reached the server.
	got := commandFrames(s)
	if got[typeConfigure] != 4 || got[typeUpdateWallets] != 1 || got[typeUpdateStrategy] != 1 || got[typeUpdateWatchWallets] != 1 || len(got) != 4 {
		t.Fatalf("client frames by type: %v", got)
	}
}

// Position and balance facts re-emitted after every reconnect are stored once.
func TestReemittedFactsStoredOnce(t *testing.T) {
	s := startSim(t, sim.Config{FirstSessionID: 7})
	r := run(t, testConfig(s.URL()), "")
	r.waitConnected()
	id := strconv.FormatUint(s.OpenPosition(walletA, mintA, 1_000_000), 10)
	connectortest.Eventually(t, wait, "position in KV", func() bool { return r.position(id) != nil })
	opened := r.position(id)["opened_at_ms"]

	for i := 2; i <= 3; i++ {
		s.DropConnections()
		// The re-emitted position_opened was processed once the KV entry
		// names the new upstream session.
		want := strconv.Itoa(7 + i - 1)
		connectortest.Eventually(t, wait, "re-emission processed", func() bool {
			p := r.position(id)
			return p != nil && p["upstream_session"] == want
		})
		if got := r.position(id)["opened_at_ms"]; got != opened {
			t.Fatalf("open time moved on re-emission: %v -> %v", opened, got)
		}
	}
	// A marker published after the re-emissions, on the same stream and
	// connection, proves they were all offered to JetStream before it.
	s.SendRaw([]byte(`{"type":"marker"}`))
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.marker._", 1)
	if n := r.env.Count(subjects.StreamLaserSellEvents, "lasersell.t1.event.position_opened.>"); n != 1 {
		t.Fatalf("position_opened stored %d times, want 1", n)
	}
	if n := r.env.Count(subjects.StreamLaserSellEvents, "lasersell.t1.event.balance_update.>"); n != 1 {
		t.Fatalf("balance_update stored %d times, want 1", n)
	}
	if n := r.env.Count(subjects.StreamLaserSellEvents, "lasersell.t1.event.hello_ok._"); n != 3 {
		t.Fatalf("hello_ok stored %d times, want one per session (3)", n)
	}

	// Without opened_at_ms, the first receive time is kept across re-emissions.
	frame := `{"type":"position_opened","position_id":777,"wallet_pubkey":"` + walletA + `","mint":"` + mintA + `","token_account":"TA","slot":1}`
	s.SendRaw([]byte(frame))
	connectortest.Eventually(t, wait, "raw position in KV", func() bool { return r.position("777") != nil })
	first := r.position("777")
	if first["opened_at_source"] != "received" {
		t.Fatalf("position 777: %v", first)
	}
	time.Sleep(5 * time.Millisecond) // let the clock move
	s.SendRaw([]byte(strings.Replace(frame, `"slot":1`, `"slot":2`, 1)))
	s.SendRaw([]byte(`{"type":"marker"}`))
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.marker._", 2)
	// The marker was read after the re-emission: memory (which KV follows) is current.
	if got := r.memPosition(777).OpenedAtMS; float64(got) != first["opened_at_ms"] {
		t.Fatalf("receive-time open moved: %v -> %v", first["opened_at_ms"], got)
	}
	// A re-emission claiming a later opening does not move it either.
	later := strconv.FormatInt(int64(first["opened_at_ms"].(float64))+60_000, 10)
	s.SendRaw([]byte(strings.Replace(frame, `"slot":1`, `"slot":3,"opened_at_ms":`+later, 1)))
	s.SendRaw([]byte(`{"type":"marker"}`))
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.marker._", 3)
	if got := r.memPosition(777); float64(got.OpenedAtMS) != first["opened_at_ms"] || got.OpenedAtSource != "received" {
		t.Fatalf("open time moved later: %v -> %+v", first["opened_at_ms"], got)
	}
}

// Keep-alive: application pings measure the RTT, protocol pings from the
// server are answered, and a silent peer is detected by the read deadline.
func TestKeepAliveAndDeadPeer(t *testing.T) {
	s := startSim(t, sim.Config{PingEvery: 30 * time.Millisecond})
	cfg := testConfig(s.URL())
	cfg.PingInterval = 50 * time.Millisecond
	cfg.ReadTimeout = 400 * time.Millisecond
	r := run(t, cfg, "")
	r.waitConnected()
	connectortest.Eventually(t, wait, "periodic ping RTT", func() bool { return r.metric("connector_upstream_rtt_seconds") > 0 })
	connectortest.Eventually(t, wait, "protocol pongs", func() bool {
		for _, f := range s.Received() {
			if f.Opcode == websocket.PongMessage {
				return true
			}
		}
		return false
	})
	if r.metric("connector_upstream_connected") != 1 {
		t.Fatal("connected gauge not set")
	}

	// A stall longer than the read timeout: no frames, no pongs.
	s.Stall(time.Second)
	connectortest.Eventually(t, wait, "reconnect after a dead peer", func() bool { return s.Connections() >= 2 })
	defer func() {
		if t.Failed() {
			for _, m := range r.statuses() {
				t.Logf("status %s", m.Data())
			}
		}
	}()
	connectortest.Eventually(t, wait, "a disconnected status naming the read timeout", func() bool {
		for _, m := range r.statuses() {
			var st map[string]any
			_ = json.Unmarshal(m.Data(), &st)
			if reason, _ := st["reason"].(string); st["state"] == "disconnected" && strings.Contains(reason, "read timeout") {
				return true
			}
		}
		return false
	})
	r.waitConnected()
	if r.metric("connector_upstream_reconnects_total") < 1 {
		t.Fatal("reconnects not counted")
	}
}
