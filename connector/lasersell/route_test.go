package lasersell

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// checkHeaders verifies the connector's headers on one stored message.
func checkHeaders(t *testing.T, m jetstream.Msg, typ, upstream, msgID string) {
	t.Helper()
	h := m.Headers()
	if h.Get(subjects.HeaderSource) != subjects.KindLaserSell || h.Get(subjects.HeaderSession) != session {
		t.Fatalf("%s: source/session headers %v", m.Subject(), h)
	}
	if h.Get(subjects.HeaderType) != typ {
		t.Fatalf("%s: type header %q, want %q", m.Subject(), h.Get(subjects.HeaderType), typ)
	}
	if upstream != "" && h.Get(subjects.HeaderUpstreamSession) != upstream {
		t.Fatalf("%s: upstream session %q, want %q", m.Subject(), h.Get(subjects.HeaderUpstreamSession), upstream)
	}
	if _, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderReceived)); err != nil {
		t.Fatalf("%s: received header: %v", m.Subject(), err)
	}
	if _, err := strconv.ParseUint(h.Get(subjects.HeaderSeq), 10, 64); err != nil {
		t.Fatalf("%s: seq header: %v", m.Subject(), err)
	}
	if msgID != "" && h.Get(subjects.HeaderMsgID) != msgID {
		t.Fatalf("%s: Nats-Msg-Id %q, want %q", m.Subject(), h.Get(subjects.HeaderMsgID), msgID)
	}
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("payload is not JSON: %v: %q", err, b)
	}
	return m
}

func num(m map[string]any, k string) string {
	f, _ := m[k].(float64)
	return strconv.FormatUint(uint64(f), 10)
}

// Every server message type lands on its documented subject and stream, with
// the frame's bytes verbatim and the documented headers.
func TestEveryEventTypeLandsOnItsSubject(t *testing.T) {
	s := startSim(t, sim.Config{FirstSessionID: 42})
	cfg := testConfig(s.URL())
	cfg.ReconcileAfter = time.Hour // its ping's pong would precede the raw pong below
	r := run(t, cfg, "")
	st := r.waitConnected()
	if st["upstream_session"] != "42" {
		t.Fatalf("status %v: want upstream session 42", st)
	}
	detail, _ := st["detail"].(map[string]any)
	limits, _ := detail["limits"].(map[string]any)
	if limits["max_wallets_per_session"] != float64(10) {
		t.Fatalf("status detail %v: want the hello_ok limits", detail)
	}
	hello := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.hello_ok._", 1)[0]
	checkHeaders(t, hello, "hello_ok", "42", "")

	// Sim-generated facts: balance_update + position_opened, exits, PnL, close.
	id := s.OpenPosition(walletA, mintA, 5_000_000)
	ids := strconv.FormatUint(id, 10)
	if err := s.SendExitSignal(id, "target_profit"); err != nil {
		t.Fatal(err)
	}
	if err := s.SendLadderExit(id, 2, 1000); err != nil {
		t.Fatal(err)
	}
	if err := s.SendPnL(id, 3); err != nil {
		t.Fatal(err)
	}

	bal := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.balance_update."+walletA, 1)[0]
	bm := decode(t, bal.Data())
	checkHeaders(t, bal, "balance_update", "42", "t1:balance:"+walletA+":"+mintA+":"+num(bm, "slot")+":"+num(bm, "tokens"))

	open := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.position_opened."+ids, 1)[0]
	checkHeaders(t, open, "position_opened", "42", "t1:pos-open:"+ids)
	if om := decode(t, open.Data()); om["wallet_pubkey"] != walletA || om["mint"] != mintA {
		t.Fatalf("position_opened payload %s", open.Data())
	}

	exits := r.fetch(subjects.StreamLaserSellExit, "lasersell.t1.exit."+walletA, 2)
	for i, m := range exits {
		em := decode(t, m.Data())
		level := "-"
		if i == 1 {
			level = "2"
		}
		checkHeaders(t, m, "exit_signal_with_tx", "42", "t1:exit:42:"+ids+":"+num(em, "triggered_at_ms")+":"+level)
		if em["unsigned_tx_b64"] == "" {
			t.Fatalf("exit payload %s", m.Data())
		}
	}
	// Low-lane telemetry carries only Connector-Received and Connector-Seq
	// (the subject names source, session and type): the core keeps it lean.
	for _, m := range r.fetch(subjects.StreamLaserSellPnL, "lasersell.t1.pnl."+ids, 3) {
		h := m.Headers()
		if _, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderReceived)); err != nil {
			t.Fatalf("pnl received header: %v", err)
		}
		if _, err := strconv.ParseUint(h.Get(subjects.HeaderSeq), 10, 64); err != nil {
			t.Fatalf("pnl seq header: %v", err)
		}
		if h.Get(subjects.HeaderMsgID) != "" {
			t.Fatal("pnl_update carries no natural identity")
		}
	}

	// Verbatim: odd spacing and field order survive byte for byte, and the
	// types the SDKs know besides the facts above get their own subjects.
	raw := map[string]string{
		"lasersell.t1.pnl.9001":                      `{ "type" : "pnl_update","position_id":9001 ,"profit_units":-5,"proceeds_units":1,"server_time_ms":1}`,
		"lasersell.t1.exit.W_x":                      `{"type":"exit_signal_with_tx","wallet_pubkey":"W.x","session_id":42,"position_id":9001,"triggered_at_ms":7,"unsigned_tx_b64":"AA=="}`,
		"lasersell.t1.event.liquidity_snapshot.9001": `{"type":"liquidity_snapshot","position_id":9001,"bands":[{"slippage_bps":100,"max_tokens":5,"coverage_pct":50.0}],"liquidity_trend":"stable","server_time_ms":1}`,
		"lasersell.t1.event.trade_tick.9001":         `{"type":"trade_tick","position_id":9001,"time_ms":1,"side":"buy","token_amount":1,"quote_amount":1,"price_quote":1}`,
		"lasersell.t1.event.error._":                 `{"type":"error","code":"rate_limited","message":"slow down"}`,
		"lasersell.t1.event.pong._":                  `{"type":"pong","server_time_ms":1}`,
	}
	for _, text := range raw {
		s.SendRaw([]byte(text))
	}
	for subject, text := range raw {
		stream := subjects.StreamLaserSellEvents
		switch {
		case bytes.Contains([]byte(subject), []byte(".pnl.")):
			stream = subjects.StreamLaserSellPnL
		case bytes.Contains([]byte(subject), []byte(".exit.")):
			stream = subjects.StreamLaserSellExit
		}
		m := r.fetch(stream, subject, 1)[0]
		if string(m.Data()) != text {
			t.Fatalf("%s: payload %q, want verbatim %q", subject, m.Data(), text)
		}
	}

	if !s.ClosePosition(id, "stop_loss") {
		t.Fatal("close failed")
	}
	closed := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.position_closed."+ids, 1)[0]
	checkHeaders(t, closed, "position_closed", "42", "t1:pos-close:"+ids)
	connectortest.Eventually(t, wait, "position removed from KV", func() bool { return r.position(ids) == nil })
}

// Frames that are not JSON objects with a "type" go, raw, to the malformed
// subject; unknown types go to their own event subject, sanitized.
func TestUnknownAndMalformedFrames(t *testing.T) {
	s := startSim(t, sim.Config{})
	r := run(t, testConfig(s.URL()), "")
	r.waitConnected()

	garbage := [][]byte{
		[]byte("this is not json"),
		[]byte(`{"type":"pnl_update","position_id":`),
		[]byte(`[1,2,3]`),
		[]byte(`{"no_type":true}`),
		[]byte(`{"type":17}`),
	}
	for _, g := range garbage {
		s.SendRaw(g)
	}
	binary := []byte("\x00\x01\xfe\xffbinary")
	s.SendBinary(binary)
	unknown := `{"type":"market_regime","regime":"risk_on","server_time_ms":1}`
	hostile := `{"type":"a.b *>","position_id":"5.6"}`
	typeFirst := `{"position_id":"x","type":"future_thing","wallet_pubkey":"` + walletB + `"}`
	s.SendRaw([]byte(unknown))
	s.SendRaw([]byte(hostile))
	s.SendRaw([]byte(typeFirst))

	bad := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.malformed", len(garbage)+1)
	for i, m := range bad {
		want := binary
		if i < len(garbage) {
			want = garbage[i]
		}
		if !bytes.Equal(m.Data(), want) {
			t.Fatalf("malformed %d: %q, want %q", i, m.Data(), want)
		}
		checkHeaders(t, m, "malformed", "", "")
	}
	if got := r.metric("connector_malformed_total"); got != float64(len(garbage)+1) {
		t.Fatalf("malformed counter %v, want %d", got, len(garbage)+1)
	}
	if m := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.market_regime._", 1)[0]; string(m.Data()) != unknown {
		t.Fatalf("unknown type payload %q", m.Data())
	} else {
		checkHeaders(t, m, "market_regime", "1", "")
	}
	if m := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.a_b___.5_6", 1)[0]; string(m.Data()) != hostile {
		t.Fatalf("hostile type payload %q", m.Data())
	} else {
		checkHeaders(t, m, "a_b___", "", "")
	}
	// A string position id is a key as it is, whatever field order.
	if m := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.future_thing.x", 1)[0]; string(m.Data()) != typeFirst {
		t.Fatalf("payload %q", m.Data())
	}
	// The session survived all of it.
	if s.Connections() != 1 {
		t.Fatalf("%d connections: malformed frames must not break the session", s.Connections())
	}
}

// Two real balance updates of one holding in the same slot are two facts; an
// identical re-emission is one.
func TestBalanceUpdatesInOneSlot(t *testing.T) {
	s := startSim(t, sim.Config{})
	r := run(t, testConfig(s.URL()), "")
	r.waitConnected()
	frame := func(tokens string) []byte {
		return []byte(`{"type":"balance_update","wallet_pubkey":"` + walletC + `","mint":"` + mintA +
			`","token_account":"TA","tokens":` + tokens + `,"slot":777}`)
	}
	s.SendRaw(frame("1000"))
	s.SendRaw(frame("250")) // a second transaction in the same slot
	s.SendRaw(frame("1000"))
	s.SendRaw(frame(`"250"`)) // the same amount as a string: the same fact
	s.SendRaw([]byte(`{"type":"marker"}`))
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.marker._", 1)
	msgs := r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.balance_update."+walletC, 2)
	for i, tokens := range []string{"1000", "250"} {
		checkHeaders(t, msgs[i], "balance_update", "", "t1:balance:"+walletC+":"+mintA+":777:"+tokens)
	}
	if n := r.env.Count(subjects.StreamLaserSellEvents, "lasersell.t1.event.balance_update."+walletC); n != 2 {
		t.Fatalf("%d balance updates stored, want 2", n)
	}
}
