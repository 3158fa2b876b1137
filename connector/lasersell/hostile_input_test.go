package lasersell

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// hostileFrame is one frame a hostile server sends and where it must land.
type hostileFrame struct {
	name    string
	frame   []byte
	binary  bool
	stream  string // expected stream
	subject string // expected subject
	payload []byte // expected payload; nil: the frame itself
	typ     string // expected Connector-Type header; "" skips the check
}

func hostileCases() []hostileFrame {
	malformed := func(name string, frame []byte) hostileFrame {
		return hostileFrame{name: name, frame: frame, stream: subjects.StreamLaserSellEvents,
			subject: "lasersell.t1.malformed", typ: "malformed"}
	}
	event := func(name, frame, subject, typ string) hostileFrame {
		return hostileFrame{name: name, frame: []byte(frame), stream: subjects.StreamLaserSellEvents,
			subject: subject, typ: typ}
	}
	exits := 0
	exit := func(name, wallet, subject string) hostileFrame {
		exits++ // a distinct trigger time each: otherwise one natural Nats-Msg-Id
		return hostileFrame{name: name, stream: subjects.StreamLaserSellExit, subject: subject, typ: typeExitSignal,
			frame: fmt.Appendf(nil, `{"type":"exit_signal_with_tx","wallet_pubkey":%s,"position_id":77,"triggered_at_ms":%d,"unsigned_tx_b64":"AA=="}`, wallet, exits)}
	}
	longType := strings.Repeat("T", 300)
	longWallet := strings.Repeat("W", 200)
	big := []byte(`{"type":"big","pad":"` + strings.Repeat("x", maxEventBytes) + `"}`)
	cases := []hostileFrame{
		malformed("not JSON", []byte("this is not json")),
		malformed("empty text frame", []byte{}),
		malformed("invalid UTF-8 bytes", []byte("\xff\xfe\x00\xc3")),
		malformed("array", []byte(`[1,2,3]`)),
		malformed("string", []byte(`"s"`)),
		malformed("number", []byte(`42`)),
		malformed("null", []byte(`null`)),
		malformed("numeric type", []byte(`{"type":17}`)),
		malformed("empty type", []byte(`{"type":""}`)),
		malformed("no type", []byte(`{"no_type":true}`)),
		malformed("trailing garbage", []byte(`{"type":"x"} {"type":"y"}`)),
		malformed("truncated", []byte(`{"type":"pnl_update","position_id":`)),
		malformed("nesting over 10000", []byte(`{"type":"deep","a":`+strings.Repeat("[", 10001)+strings.Repeat("]", 10001)+`}`)),
		{name: "binary frame of valid JSON", frame: []byte(`{"type":"exit_signal_with_tx","wallet_pubkey":"W"}`), binary: true,
			stream: subjects.StreamLaserSellEvents, subject: "lasersell.t1.malformed", typ: "malformed"},
		{name: "binary garbage", frame: []byte("\x00\x01\xfe\xff"), binary: true,
			stream: subjects.StreamLaserSellEvents, subject: "lasersell.t1.malformed", typ: "malformed"},
		{name: "frame over the event limit", frame: big, payload: big[:oversizedKeep],
			stream: subjects.StreamLaserSellEvents, subject: "lasersell.t1.malformed", typ: "malformed"},

		event("nesting of 9999", `{"type":"deep","a":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}`,
			"lasersell.t1.event.deep._", "deep"),
		event("unknown type", `{"type":"market_regime","regime":"risk_on"}`, "lasersell.t1.event.market_regime._", "market_regime"),
		event("wildcards in type", `{"type":"a.b *>"}`, "lasersell.t1.event.a_b___._", "a_b___"),
		event("subject of a type", `{"type":"lasersell.t1.exit.>"}`, "lasersell.t1.event.lasersell_t1_exit__._", "lasersell_t1_exit__"),
		event("control characters in type", `{"type":"t\tab\u0000\r\n\u007f"}`, "lasersell.t1.event.t_ab____._", "t_ab____"),
		event("non-ASCII type", `{"type":"ünïcödé"}`, "lasersell.t1.event.ünïcödé._", "ünïcödé"),
		event("invalid UTF-8 in type", "{\"type\":\"x\xff\"}", "lasersell.t1.event.x_._", "x_"),
		event("long type", `{"type":"`+longType+`"}`, "lasersell.t1.event."+subjects.Token(longType)+"._", subjects.Token(longType)),
		event("duplicate type: the last wins", `{"type":"pnl_update","type":"dup_last"}`, "lasersell.t1.event.dup_last._", "dup_last"),
		event("escaped key", `{"t\u0079pe":"escaped_key"}`, "lasersell.t1.event.escaped_key._", "escaped_key"),
		event("hostile position id key", `{"type":"trade_tick","position_id":"1.2 *>"}`, "lasersell.t1.event.trade_tick.1_2___", "trade_tick"),
		event("hostile wallet key", `{"type":"liquidity_snapshot","wallet_pubkey":"w.>"}`, "lasersell.t1.event.liquidity_snapshot.w__", "liquidity_snapshot"),

		exit("wildcards in wallet", `"a.b*> c"`, "lasersell.t1.exit.a_b___c"),
		exit("empty wallet", `""`, "lasersell.t1.exit._"),
		exit("numeric wallet", `5`, "lasersell.t1.exit._"),
		exit("control characters in wallet", `"w\u0000\n\t"`, "lasersell.t1.exit.w___"),
		exit("long wallet 1", `"`+longWallet+`1"`, "lasersell.t1.exit."+subjects.Token(longWallet+"1")),
		exit("long wallet 2", `"`+longWallet+`2"`, "lasersell.t1.exit."+subjects.Token(longWallet+"2")),
		{name: "pnl with a fractional id", frame: []byte(`{"type":"pnl_update","position_id":1.5}`),
			stream: subjects.StreamLaserSellPnL, subject: "lasersell.t1.pnl.1_5"},
		{name: "pnl with a spaced id", frame: []byte(`{"type":"pnl_update","position_id":"x y"}`),
			stream: subjects.StreamLaserSellPnL, subject: "lasersell.t1.pnl.x_y"},
	}
	return cases
}

// A hostile server's frames each end on the malformed subject or on a safe
// subject, counted, in order, and the valid frames around them (one marker
// before each) are all stored; the session survives and a real exit signal
// afterwards is published normally.
func TestHostileFramesEndMalformedOrSafe(t *testing.T) {
	s := startSim(t, sim.Config{FirstSessionID: 9})
	cfg := testConfig(s.URL())
	cfg.ReconcileAfter = time.Hour // no ping: its pong would interleave
	r := run(t, cfg, "")
	r.waitConnected()

	cases := hostileCases()
	want := map[string][]hostileFrame{}
	malformed := 0
	for i, c := range cases {
		marker := fmt.Sprintf(`{"type":"marker","n":%d}`, i)
		s.SendRaw([]byte(marker))
		want[subjects.StreamLaserSellEvents] = append(want[subjects.StreamLaserSellEvents], hostileFrame{
			name: "marker before " + c.name, frame: []byte(marker), subject: "lasersell.t1.event.marker._", typ: "marker"})
		if c.binary {
			s.SendBinary(c.frame)
		} else {
			s.SendRaw(c.frame)
		}
		if c.payload == nil {
			c.payload = c.frame
		}
		if c.subject == "lasersell.t1.malformed" {
			malformed++
		}
		want[c.stream] = append(want[c.stream], c)
	}
	// Afterwards the session works as if nothing happened.
	id := s.OpenPosition(walletA, mintA, 5_000_000)
	if err := s.SendExitSignal(id, "target_profit"); err != nil {
		t.Fatal(err)
	}
	r.fetch(subjects.StreamLaserSellExit, "lasersell.t1.exit."+walletA, 1)

	for stream, list := range want {
		var got []hostileStored
		connectortest.Eventually(t, wait, stream+" holds every expected message", func() bool {
			got = hostileStoredIn(r, stream)
			return len(got) >= len(list)
		})
		if len(got) != len(list) {
			t.Errorf("%s: %d messages, want %d", stream, len(got), len(list))
		}
		for i, w := range list {
			if i >= len(got) {
				break
			}
			g := got[i]
			payload := w.payload
			if payload == nil {
				payload = w.frame
			}
			if g.subject != w.subject || !bytes.Equal(g.payload, payload) {
				t.Errorf("%s #%d (%s): stored on %q (%d bytes), want %q (%d bytes)", stream, i, w.name, g.subject, len(g.payload), w.subject, len(payload))
				continue
			}
			if w.typ != "" && g.typ != w.typ {
				t.Errorf("%s (%s): Connector-Type %q, want %q", w.name, stream, g.typ, w.typ)
			}
		}
	}
	if got := r.metric("connector_malformed_total"); got != float64(malformed) {
		t.Errorf("connector_malformed_total = %v, want %d", got, malformed)
	}
	if n := s.Connections(); n != 1 {
		t.Errorf("%d connections: hostile frames must not end the session", n)
	}
}

// hostileStored is one stored message, reduced to what the test compares.
type hostileStored struct {
	subject, typ string
	payload      []byte
}

// hostileStoredIn returns the session's messages of stream in stream order,
// without the connector's own status and the hello_ok of the connection.
func hostileStoredIn(r *rig, stream string) []hostileStored {
	filter := "lasersell." + session + ".>"
	msgs := r.env.Fetch(stream, filter, int(r.env.Count(stream, filter)), wait)
	var out []hostileStored
	for _, m := range msgs {
		switch {
		case m.Subject() == "lasersell.t1.status", m.Subject() == "lasersell.t1.event.hello_ok._",
			// The real position opened at the end, and its exit.
			strings.HasSuffix(m.Subject(), "."+walletA), strings.HasPrefix(m.Subject(), "lasersell.t1.event.position_opened."):
			continue
		}
		out = append(out, hostileStored{subject: m.Subject(), typ: m.Headers().Get(subjects.HeaderType), payload: m.Data()})
	}
	return out
}

// Upstream strings in Nats-Msg-Id parts: a ':' or a space in a wallet, mint
// or id must not make two different facts share one id (which JetStream
// would deduplicate, losing one); such events get a unique synthetic id.
func TestHostileMsgIDParts(t *testing.T) {
	s := startSim(t, sim.Config{})
	cfg := testConfig(s.URL())
	cfg.ReconcileAfter = time.Hour
	r := run(t, cfg, "")
	r.waitConnected()
	frames := []string{
		`{"type":"balance_update","wallet_pubkey":"a:b","mint":"c","slot":1,"tokens":2}`,
		`{"type":"balance_update","wallet_pubkey":"a","mint":"b:c","slot":1,"tokens":2}`,
		`{"type":"position_opened","position_id":"5 "}`,
		`{"type":"position_opened","position_id":"5"}`,
		`{"type":"exit_signal_with_tx","wallet_pubkey":"W","position_id":"1:2","triggered_at_ms":3,"session_id":"s"}`,
		`{"type":"exit_signal_with_tx","wallet_pubkey":"W","position_id":"1","triggered_at_ms":"2:3","session_id":"s"}`,
	}
	for _, f := range frames {
		s.SendRaw([]byte(f))
	}
	ids := map[string]string{}
	for _, m := range append(r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.>", 5),
		r.fetch(subjects.StreamLaserSellExit, "lasersell.t1.exit.>", 2)...) {
		if m.Subject() == "lasersell.t1.event.hello_ok._" {
			continue
		}
		id := m.Headers().Get(subjects.HeaderMsgID)
		if prev, dup := ids[id]; dup {
			t.Errorf("%q and %q share Nats-Msg-Id %q", prev, m.Data(), id)
		}
		ids[id] = string(m.Data())
	}
	if len(ids) != len(frames) {
		t.Fatalf("%d distinct events stored, want %d: %v", len(ids), len(frames), ids)
	}
	// The clean one keeps its natural identity.
	if ids["t1:pos-open:5"] != frames[3] {
		t.Errorf("position 5 lost its natural Nats-Msg-Id: %v", ids)
	}
}

// A frame over the WebSocket read limit (4 MiB) ends the connection: the
// status says why, the connector reconnects by itself and the new session
// publishes normally.
func TestFrameOverReadLimitReconnects(t *testing.T) {
	s := startSim(t, sim.Config{FirstSessionID: 20})
	r := run(t, testConfig(s.URL()), "")
	if st := r.waitConnected(); st["upstream_session"] != "20" {
		t.Fatalf("first status %v", st)
	}
	s.SendRaw([]byte(`{"type":"before"}`))
	s.SendRaw(bytes.Repeat([]byte("x"), readLimit+1))
	connectortest.Eventually(t, wait, "a new upstream session", func() bool {
		st := r.status()
		return st != nil && st["state"] == "connected" && st["upstream_session"] == "21"
	})
	reason := ""
	for _, m := range r.statuses() {
		doc := decode(t, m.Data())
		if why, _ := doc["reason"].(string); strings.Contains(why, fmt.Sprintf("frame larger than %d bytes", readLimit)) {
			reason = why
		}
	}
	if reason == "" {
		t.Error("no status names the oversized frame")
	}
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.before._", 1)
	s.SendRaw([]byte(`{"type":"after"}`))
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.after._", 1)
	if got := r.env.Metric("connector_upstream_reconnects_total"); got < 1 {
		t.Errorf("connector_upstream_reconnects_total = %v", got)
	}
}
