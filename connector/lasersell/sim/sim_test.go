package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestAPIKeyAndRefusal(t *testing.T) {
	s := startSim(t, quietConfig())
	for _, key := range []string{"", "wrong"} {
		h := http.Header{}
		if key != "" {
			h.Set("x-api-key", key)
		}
		_, resp, err := websocket.DefaultDialer.Dial(s.URL(), h)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("key %q: want 401, got %v %v", key, resp, err)
		}
	}
	s.SetRefuseStatus(http.StatusServiceUnavailable)
	h := http.Header{"X-Api-Key": {testKey}}
	if _, resp, err := websocket.DefaultDialer.Dial(s.URL(), h); err == nil || resp.StatusCode != 503 {
		t.Fatalf("want 503, got %v %v", resp, err)
	}
	s.SetRefuseStatus(0)
	dial(t, s).expect("hello_ok")
	if st := s.Stats(); st.Refused != 3 || st.Connections != 1 {
		t.Fatalf("stats %+v", st)
	}
	resp, err := http.Get("http" + strings.TrimPrefix(strings.TrimSuffix(s.URL(), DefaultPath), "ws") + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestHelloServerFirst(t *testing.T) {
	cfg := quietConfig()
	cfg.FirstSessionID = 42
	s := startSim(t, cfg)
	c := dial(t, s)
	h := c.expect("hello_ok")
	if h.num("session_id") != 42 || h.num("server_time_ms") < 1.7e12 {
		t.Fatalf("hello: %s", h.raw)
	}
	var lim Limits
	b, _ := json.Marshal(h.msg["limits"])
	if err := json.Unmarshal(b, &lim); err != nil || lim != DefaultLimits() {
		t.Fatalf("limits %s: %+v %v", b, lim, err)
	}
	if _, ok := h.msg["limits"].(map[string]any)["max_watch_wallets_per_session"]; !ok {
		t.Fatal("max_watch_wallets_per_session missing")
	}
	s.OpenPosition(walletA, mintA, 1000)
	c.configure(walletA)
	if got := types(c.barrier()); !slices.Equal(got, []string{"balance_update", "position_opened"}) {
		t.Fatalf("after configure: %v", got)
	}
	c2 := dial(t, s)
	if h := c2.expect("hello_ok"); h.num("session_id") != 43 {
		t.Fatalf("second session id: %s", h.raw)
	}
}

func TestHelloAfterConfigure(t *testing.T) {
	cfg := quietConfig()
	cfg.HelloOrder = HelloAfterConfigure
	s := startSim(t, cfg)
	s.OpenPosition(walletA, mintA, 1000)
	c := dial(t, s)
	c.quiet(100 * time.Millisecond)
	// An invalid configure is refused and does not produce hello_ok.
	c.send(map[string]any{"type": "configure", "wallet_pubkeys": []string{}, "strategy": goodStrategy})
	c.expectError("invalid_configure")
	c.configure(walletA)
	c.expect("hello_ok")
	c.expect("balance_update")
	c.expect("position_opened")
}

func TestHelloAlternate(t *testing.T) {
	cfg := quietConfig()
	cfg.HelloOrder = HelloAlternate
	s := startSim(t, cfg)
	for i := 1; i <= 4; i++ {
		c := dial(t, s)
		if i%2 == 1 {
			c.expect("hello_ok")
			c.configure(walletA)
		} else {
			c.quiet(60 * time.Millisecond)
			c.configure(walletA)
			c.expect("hello_ok")
		}
		c.barrier()
		c.ws.Close()
	}
}

func TestLegacyAndExtraLimits(t *testing.T) {
	cfg := quietConfig()
	cfg.LegacyLimits = true
	cfg.ExtraLimits = map[string]uint64{"max_future_thing": 7}
	cfg.Limits.HiCapacity = 2048
	s := startSim(t, cfg)
	lim := dial(t, s).expect("hello_ok").msg["limits"].(map[string]any)
	if _, ok := lim["max_watch_wallets_per_session"]; ok {
		t.Fatal("legacy limits include max_watch_wallets_per_session")
	}
	if lim["max_future_thing"] != 7.0 || lim["hi_capacity"] != 2048.0 || lim["pnl_flush_ms"] != 1000.0 {
		t.Fatalf("limits %v", lim)
	}
}

func TestConfigureValidation(t *testing.T) {
	s := startSim(t, quietConfig())
	c := dial(t, s)
	c.expect("hello_ok")
	eleven := make([]string, 11)
	for i := range eleven {
		eleven[i] = fmt.Sprintf("wallet%d", i)
	}
	manyWatch := make([]map[string]any, 11)
	for i := range manyWatch {
		manyWatch[i] = map[string]any{"pubkey": fmt.Sprintf("w%d", i)}
	}
	bad := map[string]string{
		"no wallets":        `{"type":"configure","strategy":{"target_profit_pct":5}}`,
		"empty wallets":     `{"type":"configure","wallet_pubkeys":[],"strategy":{"target_profit_pct":5}}`,
		"wallets not list":  `{"type":"configure","wallet_pubkeys":42,"strategy":{"target_profit_pct":5}}`,
		"empty wallet":      `{"type":"configure","wallet_pubkeys":[""],"strategy":{"target_profit_pct":5}}`,
		"too many wallets":  fmt.Sprintf(`{"type":"configure","wallet_pubkeys":%s,"strategy":{"target_profit_pct":5}}`, mustJSON(eleven)),
		"no strategy":       `{"type":"configure","wallet_pubkeys":["a"]}`,
		"strategy not obj":  `{"type":"configure","wallet_pubkeys":["a"],"strategy":[1]}`,
		"all zero":          `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":0,"stop_loss_pct":0}}`,
		"negative":          `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5,"stop_loss_pct":-1}}`,
		"infinite":          `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":1e999}}`,
		"nan string":        `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":"NaN"}}`,
		"bad ladder":        `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5,"take_profit_levels":[{"profit_pct":10,"sell_pct":150}]}}`,
		"bad bool":          `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5,"liquidity_guard":"yes"}}`,
		"bad deadline":      `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5},"deadline_timeout_sec":-3}`,
		"bad tip":           `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5},"tip_lamports":"x"}`,
		"bad watch":         `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5},"watch_wallets":[{"auto_buy":{}}]}`,
		"too many watch":    fmt.Sprintf(`{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5},"watch_wallets":%s}`, mustJSON(manyWatch)),
		"bad mirror config": `{"type":"configure","wallet_pubkeys":["a"],"strategy":{"target_profit_pct":5},"mirror_config":3}`,
	}
	for name, raw := range bad {
		c.sendRaw(websocket.TextMessage, []byte(raw))
		f := c.expectError("invalid_configure")
		t.Logf("%s: %s", name, f.msg["message"])
	}
	if s.LastConfigure() != nil {
		t.Fatal("invalid configure recorded as LastConfigure")
	}
	good := []string{
		`{"type":"configure","wallet_pubkey":"a","strategy":{"target_profit_pct":0,"stop_loss_pct":0},"deadline_timeout_sec":30}`,
		`{"type":"configure","wallet_pubkey":["a","b","a"],"strategy":{"trailing_stop_pct":1.5,"take_profit_levels":[{"trigger_pct":10,"sell_pct":50,"trailing_adj_pct":1}]}}`,
		`{"type":"configure","wallet_pubkeys":"a","strategy":{"stop_loss_pct":10,"sell_on_graduation":true,"liquidity_guard":false,"breakeven_trail_pct":2},"send_mode":"helius_sender","tip_lamports":1000,"watch_wallets":[{"pubkey":"w","auto_buy":{"wallet_pubkey":"a","amount_quote_units":5},"mirror_sell":true}],"mirror_config":{}}`,
	}
	for _, raw := range good {
		c.sendRaw(websocket.TextMessage, []byte(raw))
		if got := c.barrier(); len(got) != 0 {
			t.Fatalf("valid configure %s answered %v", raw, types(got))
		}
		if !bytes.Equal(s.LastConfigure(), []byte(raw)) {
			t.Fatalf("LastConfigure = %s", s.LastConfigure())
		}
	}
}

func TestReemissionIdenticalAfterReconnect(t *testing.T) {
	cfg := quietConfig()
	cfg.AutoPositions = 2
	s := startSim(t, cfg)
	s.AddHolding(walletA, mintA, 5_000_000)
	id := s.OpenPosition(walletA, mintB, 7_000_000)
	s.OpenPosition(walletB, mintA, 1) // a wallet nobody configures: never emitted
	s.AddHolding(walletA, "emptymint", 0)

	session := func(wallets ...string) ([][]byte, error) {
		c := dial(t, s)
		c.expect("hello_ok")
		c.configure(wallets...)
		var raws [][]byte
		for _, f := range c.barrier() {
			raws = append(raws, f.raw)
		}
		s.DropConnections()
		_, err := c.waitErr(2 * time.Second)
		return raws, err
	}
	first, err := session(walletA, "fresh-wallet")
	if !websocket.IsCloseError(err, websocket.CloseAbnormalClosure) {
		t.Fatalf("drop: want abnormal closure (no close frame), got %v", err)
	}
	// walletA: 2 balances + 1 position; fresh-wallet: 2 auto balances + 2 positions.
	want := []string{"balance_update", "balance_update", "balance_update", "balance_update",
		"position_opened", "position_opened", "position_opened"}
	var got []string
	for _, r := range first {
		var m map[string]any
		_ = json.Unmarshal(r, &m)
		got = append(got, m["type"].(string))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	if !bytes.Contains(first[4], []byte(`"position_id":`+strconv.FormatUint(id, 10)+`,`)) {
		t.Fatalf("first position is not %d: %s", id, first[4])
	}
	for range 2 {
		again, _ := session(walletA, "fresh-wallet")
		if len(again) != len(first) {
			t.Fatalf("re-emission has %d frames, want %d", len(again), len(first))
		}
		for i := range first {
			if !bytes.Equal(first[i], again[i]) {
				t.Fatalf("frame %d differs after reconnect:\n%s\n%s", i, first[i], again[i])
			}
		}
	}
	if n := s.Connections(); n != 3 {
		t.Fatalf("Connections() = %d", n)
	}
}

func TestCommands(t *testing.T) {
	s := startSim(t, quietConfig())
	idA := s.OpenPosition(walletA, mintA, 2_000_000)
	idA2 := s.OpenPosition(walletA, mintB, 3_000_000)
	idB := s.OpenPosition(walletB, mintA, 4_000_000)

	pre := dial(t, s)
	pre.expect("hello_ok")
	pre.send(map[string]any{"type": "update_strategy", "strategy": goodStrategy})
	pre.expectError(CodeNotConfigured)

	c := dial(t, s)
	c.expect("hello_ok")
	c.configure(walletA)
	if got := types(c.barrier()); len(got) != 4 {
		t.Fatalf("snapshot %v", got)
	}

	// ping -> pong
	c.send(map[string]any{"type": "ping", "client_time_ms": 1})
	if p := c.expect("pong"); p.num("server_time_ms") < 1.7e12 {
		t.Fatalf("pong %s", p.raw)
	}

	silent := func(v any) {
		t.Helper()
		c.send(v)
		if got := c.barrier(); len(got) != 0 {
			t.Fatalf("%v answered %s", v, got[0].raw)
		}
	}
	silent(map[string]any{"type": "update_strategy", "strategy": map[string]any{"trailing_stop_pct": 3}})
	c.send(map[string]any{"type": "update_strategy", "strategy": map[string]any{"target_profit_pct": 0}})
	c.expectError("invalid_update_strategy")
	silent(map[string]any{"type": "update_watch_wallets", "watch_wallets": []any{map[string]any{"pubkey": walletB}}})
	c.send(map[string]any{"type": "update_watch_wallets"})
	c.expectError("invalid_update_watch_wallets")
	silent(map[string]any{"type": "update_position_strategy", "position_id": idA, "strategy": goodStrategy})
	silent(map[string]any{"type": "UpdatePositionStrategy", "position_id": idA, "strategy": goodStrategy})
	c.send(map[string]any{"type": "update_position_strategy", "position_id": idB, "strategy": goodStrategy})
	c.expectError(CodePositionNotFound) // walletB is not configured on this session
	c.send(map[string]any{"type": "update_position_strategy", "strategy": goodStrategy})
	c.expectError("invalid_update_position_strategy")

	// update_wallets: full replacement; only the newly added wallet's facts arrive.
	c.send(map[string]any{"type": "update_wallets", "wallet_pubkeys": []string{walletA, walletB}})
	added := c.barrier()
	if got := types(added); !slices.Equal(got, []string{"balance_update", "position_opened"}) || added[0].msg["wallet_pubkey"] != walletB {
		t.Fatalf("update_wallets emitted %v", got)
	}
	c.send(map[string]any{"type": "update_wallets", "wallet_pubkeys": []string{}})
	c.expectError("invalid_update_wallets")

	// request_exit_signal / sell_now
	c.send(map[string]any{"type": "request_exit_signal", "position_id": idA})
	e := c.expect("exit_signal_with_tx")
	if e.msg["reason"] != "sell_now" || e.num("position_id") != float64(idA) || e.num("session_id") != 2 ||
		e.msg["wallet_pubkey"] != walletA || e.msg["mint"] != mintA || e.num("position_tokens") != 2_000_000 ||
		e.num("triggered_at_ms") < 1.7e12 || len(e.msg["unsigned_tx_b64"].(string)) < 400 || e.msg["token_account"] == "" {
		t.Fatalf("exit %s", e.raw)
	}
	if _, ok := e.msg["level_index"]; ok {
		t.Fatal("level_index on a full exit")
	}
	if _, ok := e.msg["sim_sent_ns"]; ok {
		t.Fatal("sim_sent_ns present without StampSendTime")
	}
	acct := s.Positions()[1].TokenAccount
	c.send(map[string]any{"type": "sell_now", "token_account": acct, "slippage_bps": 500})
	if e := c.expect("exit_signal_with_tx"); e.num("position_id") != float64(idA2) {
		t.Fatalf("sell_now by token account: %s", e.raw)
	}
	c.send(map[string]any{"type": "request_exit_signal", "position_id": idA, "token_account": acct})
	c.expectError("invalid_request_exit_signal")
	c.send(map[string]any{"type": "request_exit_signal"})
	c.expectError("invalid_request_exit_signal")
	c.send(map[string]any{"type": "request_exit_signal", "position_id": idA, "slippage_bps": 70000})
	c.expectError("invalid_request_exit_signal")
	c.send(map[string]any{"type": "request_exit_signal", "position_id": 999})
	c.expectError(CodePositionNotFound)

	// close_position
	c.send(map[string]any{"type": "close_position", "position_id": idA})
	if cl := c.expect("position_closed"); cl.msg["reason"] != "manual" || cl.num("position_id") != float64(idA) || cl.num("slot") == 0 {
		t.Fatalf("closed %s", cl.raw)
	}
	c.send(map[string]any{"type": "close_position", "position_id": idA})
	c.expectError(CodePositionNotFound)
	c.send(map[string]any{"type": "close_position", "token_account": acct})
	if cl := c.expect("position_closed"); cl.num("position_id") != float64(idA2) {
		t.Fatalf("close by token account: %s", cl.raw)
	}
	c.send(map[string]any{"type": "close_position", "position_id": "x"})
	c.expectError("invalid_close_position")

	// malformed input
	c.send(map[string]any{"type": "teleport"})
	c.expectError(CodeUnknownType)
	c.sendRaw(websocket.TextMessage, []byte("hello?"))
	c.expectError(CodeInvalidMessage)
	c.sendRaw(websocket.TextMessage, []byte("[1]"))
	c.expectError(CodeInvalidMessage)
	c.sendRaw(websocket.BinaryMessage, []byte{1, 2})
	c.expectError(CodeInvalidMessage)
	c.send(map[string]any{"typ": "ping"})
	c.expectError(CodeMissingType)

	if got := s.Positions(); len(got) != 1 || got[0].ID != idB {
		t.Fatalf("positions %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	f, err := s.WaitFor(ctx, func(f ClientFrame) bool { return f.Type == "sell_now" })
	if err != nil || f.Conn != 2 || f.SessionID != 2 || f.Opcode != websocket.TextMessage || !bytes.Contains(f.Raw, []byte(acct)) {
		t.Fatalf("WaitFor: %+v %v", f, err)
	}
	var bin int
	for _, f := range s.Received() {
		if f.Opcode == websocket.BinaryMessage {
			bin++
		}
	}
	if bin != 1 {
		t.Fatalf("binary frames recorded: %d", bin)
	}
}

func TestProgrammaticAPI(t *testing.T) {
	s := startSim(t, quietConfig())
	c := dial(t, s)
	c.expect("hello_ok")
	c.configure(walletA)
	c.barrier()
	if s.ActiveSessions() != 1 {
		t.Fatalf("ActiveSessions = %d", s.ActiveSessions())
	}

	id := s.OpenPosition(walletA, mintA, 9_000_000)
	if b := c.expect("balance_update"); b.num("tokens") != 9_000_000 || b.num("slot") == 0 {
		t.Fatalf("balance %s", b.raw)
	}
	po := c.expect("position_opened")
	for _, k := range []string{"position_id", "wallet_pubkey", "mint", "token_account", "tokens", "entry_quote_units", "slot", "market_context", "opened_at_ms", "token_symbol"} {
		if _, ok := po.msg[k]; !ok {
			t.Fatalf("position_opened lacks %s: %s", k, po.raw)
		}
	}
	s.OpenPosition(walletB, mintA, 1) // other wallet: not delivered
	s.AddHolding(walletA, mintB, 77)
	if b := c.expect("balance_update"); b.msg["mint"] != mintB || b.num("tokens") != 77 {
		t.Fatalf("AddHolding %s", b.raw)
	}

	if err := s.SendExitSignal(id, "stop_loss"); err != nil {
		t.Fatal(err)
	}
	e1 := c.expect("exit_signal_with_tx")
	if e1.msg["reason"] != "stop_loss" || e1.num("profit_units") >= 0 {
		t.Fatalf("exit %s", e1.raw)
	}
	if err := s.SendLadderExit(id, 1, 2_000_000); err != nil {
		t.Fatal(err)
	}
	e2 := c.expect("exit_signal_with_tx")
	if e2.num("level_index") != 1 || e2.num("sell_tokens") != 2_000_000 || e2.msg["reason"] != "target_profit" {
		t.Fatalf("ladder exit %s", e2.raw)
	}
	if e2.num("triggered_at_ms") <= e1.num("triggered_at_ms") {
		t.Fatal("triggered_at_ms not increasing per position")
	}
	if err := s.SendExitSignal(12345, "x"); !errors.Is(err, ErrUnknownPosition) {
		t.Fatalf("unknown position: %v", err)
	}
	bID := s.Positions()[1].ID
	if err := s.SendExitSignal(bID, "x"); !errors.Is(err, ErrNoSession) {
		t.Fatalf("no session: %v", err)
	}

	// A PnL burst, then an exit signal: the wire keeps the order.
	if err := s.SendPnL(id, 100); err != nil {
		t.Fatal(err)
	}
	if err := s.SendExitSignal(id, "trailing_stop"); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		p := c.expect("pnl_update")
		if p.num("position_id") != float64(id) || len(p.raw) < 150 || len(p.raw) > 230 {
			t.Fatalf("pnl %d: %s (%d bytes)", i, p.raw, len(p.raw))
		}
		for _, k := range []string{"profit_units", "proceeds_units", "server_time_ms", "token_price_quote", "market_cap_quote"} {
			if _, ok := p.msg[k]; !ok {
				t.Fatalf("pnl lacks %s", k)
			}
		}
	}
	c.expect("exit_signal_with_tx")

	s.SendRaw([]byte(`{"type":"brand_new","x":1}`))
	if f := c.expect("brand_new"); f.mt != websocket.TextMessage {
		t.Fatal("SendRaw frame type")
	}
	s.SendBinary([]byte{0xde, 0xad})
	if f, _ := c.next(time.Second); f.mt != websocket.BinaryMessage || !bytes.Equal(f.raw, []byte{0xde, 0xad}) {
		t.Fatalf("SendBinary: %v %v", f.mt, f.raw)
	}
	if !s.ClosePosition(id, "graduation") || s.ClosePosition(id, "graduation") {
		t.Fatal("ClosePosition result")
	}
	if cl := c.expect("position_closed"); cl.msg["reason"] != "graduation" {
		t.Fatalf("closed %s", cl.raw)
	}
	st := s.Stats()
	if st.ExitSignalsSent != 3 || st.PnLSent != 100 || st.FramesSent < 110 {
		t.Fatalf("stats %+v", st)
	}
}

func TestScheduledExitsAndOpens(t *testing.T) {
	cfg := quietConfig()
	cfg.ExitEvery = 15 * time.Millisecond
	cfg.ExitCloses = true
	cfg.OpenEvery = 25 * time.Millisecond
	cfg.Limits.MaxPositionsPerWallet = 3
	s := startSim(t, cfg)
	c := dial(t, s)
	c.expect("hello_ok")
	c.configure(walletA)
	var exits, closes, opens int
	deadline := time.Now().Add(3 * time.Second)
	for exits < 3 || closes < 2 || opens < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("exits %d closes %d opens %d", exits, closes, opens)
		}
		f, _ := c.next(time.Second)
		switch f.typ() {
		case "exit_signal_with_tx":
			exits++
			if f.msg["wallet_pubkey"] != walletA {
				t.Fatalf("exit %s", f.raw)
			}
		case "position_closed":
			closes++
		case "position_opened":
			opens++
		}
	}
}

func TestPeriodicMessages(t *testing.T) {
	cfg := quietConfig()
	cfg.LiquidityEvery = 10 * time.Millisecond
	cfg.TradeTickEvery = 10 * time.Millisecond
	cfg.UnknownTypeEvery = 10 * time.Millisecond
	cfg.AutoPositions = 1
	s := startSim(t, cfg)
	c := dial(t, s)
	c.expect("hello_ok")
	c.configure(walletA)
	l := c.until("liquidity_snapshot", 2*time.Second)
	if bands, _ := l.msg["bands"].([]any); len(bands) != 4 || l.msg["liquidity_trend"] == "" || l.num("server_time_ms") == 0 {
		t.Fatalf("liquidity %s", l.raw)
	}
	tt := c.until("trade_tick", 2*time.Second)
	for _, k := range []string{"position_id", "time_ms", "side", "token_amount", "quote_amount", "price_quote"} {
		if _, ok := tt.msg[k]; !ok {
			t.Fatalf("trade_tick lacks %s: %s", k, tt.raw)
		}
	}
	c.until(DefaultUnknownType, 2*time.Second)
}

func TestFaultDropAfterFrames(t *testing.T) {
	cfg := quietConfig()
	cfg.DropAfterFrames = 3
	s := startSim(t, cfg)
	s.OpenPosition(walletA, mintA, 1)
	s.OpenPosition(walletA, mintB, 1)
	c := dial(t, s)
	c.configure(walletA)
	got, err := c.waitErr(2 * time.Second)
	if len(got) != 3 || !websocket.IsCloseError(err, websocket.CloseAbnormalClosure) {
		t.Fatalf("got %v then %v", types(got), err)
	}
	if s.Stats().Drops != 1 {
		t.Fatalf("drops %d", s.Stats().Drops)
	}
	dial(t, s).expect("hello_ok") // reconnects fine
}

func TestFaultDropEvery(t *testing.T) {
	cfg := quietConfig()
	cfg.DropEvery = 50 * time.Millisecond
	s := startSim(t, cfg)
	// From before the dial: the server's drop timer starts when it accepts,
	// which a loaded machine may take a while to report back to the client.
	start := time.Now()
	c := dial(t, s)
	_, err := c.waitErr(2 * time.Second)
	if !websocket.IsCloseError(err, websocket.CloseAbnormalClosure) || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("drop-every: %v after %v", err, time.Since(start))
	}
}

func TestFaultGarbage(t *testing.T) {
	cfg := quietConfig()
	cfg.GarbageEvery = 5 * time.Millisecond
	s := startSim(t, cfg)
	c := dial(t, s)
	c.expect("hello_ok")
	for i, g := range garbageFrames {
		f, ok := c.next(2 * time.Second)
		if !ok || f.err != nil {
			t.Fatalf("garbage %d: %v", i, f.err)
		}
		if f.mt != int(g.op) || string(f.raw) != g.payload {
			t.Fatalf("garbage %d: got %d %q", i, f.mt, f.raw)
		}
	}
}

func TestFaultStall(t *testing.T) {
	s := startSim(t, quietConfig())
	c := dial(t, s)
	c.expect("hello_ok")
	var pongs int
	c.ws.SetPongHandler(func(string) error { pongs++; return nil })
	stall := 300 * time.Millisecond
	start := time.Now()
	s.Stall(stall)
	if err := c.ws.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	c.send(map[string]any{"type": "ping", "client_time_ms": 1})
	s.SendRaw([]byte(`{"type":"during_stall"}`))
	c.quiet(200 * time.Millisecond)
	f := c.expect("during_stall")
	c.expect("pong")
	if time.Since(start) < stall-20*time.Millisecond {
		t.Fatalf("answered after %v, stall %v", time.Since(start), stall)
	}
	_ = f
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := s.WaitFor(ctx, func(f ClientFrame) bool { return f.Opcode == websocket.PingMessage }); err != nil {
		t.Fatal("ws ping not recorded")
	}
	if pongs != 0 {
		t.Fatal("ws ping answered during stall")
	}
	if s.Stats().Stalls != 1 {
		t.Fatal("stall not counted")
	}
}

func TestFaultStallEveryGapsPnL(t *testing.T) {
	cfg := quietConfig()
	cfg.PnLRate = 2000
	cfg.StallEvery = 60 * time.Millisecond
	cfg.StallFor = 40 * time.Millisecond
	s := startSim(t, cfg)
	s.OpenPosition(walletA, mintA, 1_000_000)
	c := dial(t, s)
	c.configure(walletA)
	c.until("pnl_update", time.Second)
	var last time.Time
	var gap time.Duration
	for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); {
		f, ok := c.next(200 * time.Millisecond)
		if !ok || f.err != nil {
			t.Fatal("pnl stopped")
		}
		if !last.IsZero() {
			gap = max(gap, f.at.Sub(last))
		}
		last = f.at
	}
	if gap < 30*time.Millisecond {
		t.Fatalf("largest PnL gap %v: no stall visible", gap)
	}
}

func TestServerPings(t *testing.T) {
	cfg := quietConfig()
	cfg.PingEvery = 10 * time.Millisecond
	s := startSim(t, cfg)
	c := dial(t, s)
	c.expect("hello_ok")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n := 0
	_, err := s.WaitFor(ctx, func(f ClientFrame) bool {
		if f.Opcode == websocket.PongMessage {
			n++
		}
		return n >= 3
	})
	if err != nil || c.pings.Load() < 3 {
		t.Fatalf("pongs %d pings %d: %v", n, c.pings.Load(), err)
	}
}

func TestStampSendTime(t *testing.T) {
	cfg := quietConfig()
	cfg.StampSendTime = true
	s := startSim(t, cfg)
	id := s.OpenPosition(walletA, mintA, 1_000)
	c := dial(t, s)
	c.expect("hello_ok")
	c.configure(walletA)
	c.barrier()
	before := time.Now().UnixNano()
	if err := s.SendExitSignal(id, "target_profit"); err != nil {
		t.Fatal(err)
	}
	e := c.expect("exit_signal_with_tx")
	var m struct {
		SimSentNs int64 `json:"sim_sent_ns"`
	}
	if err := json.Unmarshal(e.raw, &m); err != nil || m.SimSentNs < before || m.SimSentNs > time.Now().UnixNano() {
		t.Fatalf("sim_sent_ns %d: %s", m.SimSentNs, e.raw)
	}
}

func TestSessionLimit(t *testing.T) {
	cfg := quietConfig()
	cfg.Limits.MaxSessionsPerAPIKey = 2
	s := startSim(t, cfg)
	c1 := dial(t, s)
	c1.expect("hello_ok")
	dial(t, s).expect("hello_ok")
	c3 := dial(t, s)
	c3.expectError(CodeSessionLimit)
	if _, err := c3.waitErr(time.Second); !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("refused session closed with %v", err)
	}
	c1.ws.Close()
	deadline := time.Now().Add(2 * time.Second)
	for s.ActiveSessions() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("session not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dial(t, s).expect("hello_ok")
}

func TestClientCloseIsEchoed(t *testing.T) {
	s := startSim(t, quietConfig())
	c := dial(t, s)
	c.expect("hello_ok")
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.waitErr(time.Second); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("close echo: %v", err)
	}
}

func TestCloseEndsSessionsAndGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := DemoConfig()
	cfg.APIKey = testKey
	cfg.PnLRate = 500
	cfg.GarbageEvery = 5 * time.Millisecond
	cfg.PingEvery = 5 * time.Millisecond
	s := New(cfg, testLogger(t))
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	var clients []*client
	for range 3 {
		c := dial(t, s)
		c.configure(walletA)
		c.until("pnl_update", 2*time.Second)
		clients = append(clients, c)
	}
	s.Close()
	s.Close() // idempotent
	for _, c := range clients {
		if _, err := c.waitErr(2 * time.Second); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("client saw %v", err)
		}
		c.ws.Close()
	}
	if _, err := s.Start("127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines %d > %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(quietConfig(), testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	deadline := time.Now().Add(2 * time.Second)
	for s.URL() == "" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	c := dial(t, s)
	c.expect("hello_ok")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := c.waitErr(time.Second); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("client saw %v", err)
	}
}

func TestRegisterFlagsAndValidate(t *testing.T) {
	cfg := DemoConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"-addr", ":9999", "-api-key", "k", "-hello-order", "alternate", "-pnl-rate", "5",
		"-drop-every", "2s", "-limit-max-wallets-per-session", "3", "-stamp-send-time", "-garbage-every", "1s"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != ":9999" || cfg.APIKey != "k" || cfg.HelloOrder != HelloAlternate || cfg.PnLRate != 5 ||
		cfg.DropEvery != 2*time.Second || cfg.Limits.MaxWalletsPerSession != 3 || !cfg.StampSendTime ||
		cfg.GarbageEvery != time.Second || cfg.AutoPositions != 3 {
		t.Fatalf("flags not bound: %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	fs2 := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs2.SetOutput(io.Discard)
	c2 := DefaultConfig()
	c2.RegisterFlags(fs2)
	if err := fs2.Parse([]string{"-hello-order", "sideways"}); err == nil {
		t.Fatal("bad hello order accepted")
	}
	bad := DefaultConfig()
	bad.PnLRate = -1
	bad.StallEvery = time.Second
	bad.Path = "v1"
	err = bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "pnl-rate") || !strings.Contains(err.Error(), "stall-for") || !strings.Contains(err.Error(), "path") {
		t.Fatalf("Validate: %v", err)
	}
	if _, err := New(bad, testLogger(t)).Start("127.0.0.1:0"); err == nil {
		t.Fatal("Start accepted an invalid config")
	}
}

func TestBase58AndFrames(t *testing.T) {
	if got := base58([]byte{0, 0, 1}); got != "112" {
		t.Fatalf("base58 %q", got)
	}
	if k := fakeKey("x"); len(k) < 43 || len(k) > 44 {
		t.Fatalf("key %q", k)
	}
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		f := appendFrame(nil, opText, bytes.Repeat([]byte{'a'}, n))
		hdr := len(f) - n
		if want := map[bool]int{true: 2}[n < 126] + map[bool]int{true: 4}[n >= 126 && n <= 65535] + map[bool]int{true: 10}[n > 65535]; hdr != want {
			t.Fatalf("len %d header %d want %d", n, hdr, want)
		}
	}
	b, start := beginTextFrame([]byte("x"))
	b = append(b, "short"...)
	if b = endTextFrame(b, start); string(b) != "x\x81\x05short" {
		t.Fatalf("short frame %q", b)
	}
}

func TestReceivedIsBounded(t *testing.T) {
	cfg := quietConfig()
	cfg.MaxRecorded = 8
	s := startSim(t, cfg)
	c := dial(t, s)
	c.expect("hello_ok")
	for i := range 20 {
		c.send(map[string]any{"type": "ping", "client_time_ms": i})
		c.expect("pong")
	}
	got := s.Received()
	if len(got) > 8 || len(got) < 6 || !bytes.Contains(got[len(got)-1].Raw, []byte(`"client_time_ms":19`)) {
		t.Fatalf("received %d frames, last %s", len(got), got[len(got)-1].Raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if f, err := s.WaitFor(ctx, func(f ClientFrame) bool { return f.Type == "ping" }); err != nil || !bytes.Contains(f.Raw, []byte(":1")) {
		t.Fatalf("WaitFor after trimming: %s %v", f.Raw, err)
	}
	if st := s.Stats(); st.ClientFrames != 20 {
		t.Fatalf("ClientFrames %d", st.ClientFrames)
	}
}
