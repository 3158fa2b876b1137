package connector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// echoSource is a minimal source: it emits what the test asks and answers
// commands from a table, so the runtime is tested without any upstream protocol.
type echoSource struct {
	host    *connector.Host
	mu      sync.Mutex
	handled []connector.Command
}

func (s *echoSource) Commands() []string { return []string{"echo", "refuse", "fail"} }
func (s *echoSource) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (s *echoSource) Handle(_ context.Context, cmd connector.Command) (any, error) {
	s.mu.Lock()
	s.handled = append(s.handled, cmd)
	s.mu.Unlock()
	switch cmd.Name {
	case "echo":
		var body struct {
			Word string `json:"word"`
		}
		if err := connector.DecodeStrict(cmd.Body, &body); err != nil {
			return nil, err
		}
		return map[string]string{"echo": body.Word}, nil
	case "refuse":
		return nil, connector.Refuse("no_way", "refused on purpose")
	default:
		return nil, fmt.Errorf("boom")
	}
}

// newEcho starts an echo session lasersell.<name> (the streams of a real
// kind capture its events); env.Run then serves it with the others.
func newEcho(t testing.TB, env *connectortest.Env, name string, sizes connector.LaneSizes) *echoSource {
	return startEcho(t, env, name, sizes, func(e *echoSource) connector.Source { return e })
}

// startEcho starts an echo session whose source is wrap(echo).
func startEcho(t testing.TB, env *connectortest.Env, name string, sizes connector.LaneSizes, wrap func(*echoSource) connector.Source) *echoSource {
	t.Helper()
	src := &echoSource{}
	if err := env.Runtime.Start(context.Background(), echoSession(name, sizes, src, wrap)); err != nil {
		t.Fatal(err)
	}
	return src
}

func echoSession(name string, sizes connector.LaneSizes, src *echoSource, wrap func(*echoSource) connector.Source) connector.Session {
	return connector.Session{Kind: subjects.KindLaserSell, Name: name, Lanes: sizes,
		Open: func(h *connector.Host) (connector.Source, error) { src.host = h; return wrap(src), nil }}
}

func TestEventsLandVerbatimWithHeaders(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	src := newEcho(t, env, "s1", connector.LaneSizes{})
	env.Run()
	ctx := context.Background()
	received := time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC)
	payload := []byte(`{"type":"exit_signal_with_tx", "odd spacing" :1}`)
	if err := src.host.Emit(ctx, connector.Event{
		Subject: subjects.LaserSellExit("s1", "W1"), Lane: connector.LaneHigh, Payload: payload,
		MsgID: "exit-1", Type: "exit_signal_with_tx", UpstreamSession: "42", Received: received,
	}); err != nil {
		t.Fatal(err)
	}
	// The same natural identity again: JetStream must keep one copy.
	_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("s1", "W1"), Lane: connector.LaneHigh,
		Payload: payload, MsgID: "exit-1", Type: "exit_signal_with_tx"})
	_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("s1", "7"), Lane: connector.LaneLow,
		Payload: []byte(`{"type":"pnl_update"}`), Type: "pnl_update"})

	// A marker behind the duplicate: once it is stored, the duplicate was handled.
	_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("s1", "W1"), Lane: connector.LaneHigh,
		Payload: []byte(`{"marker":true}`), MsgID: "exit-2", Type: "exit_signal_with_tx"})
	if n := env.WaitCount(subjects.StreamLaserSellExit, "lasersell.s1.exit.W1", 2, 2*time.Second); n != 2 {
		t.Fatalf("exit stream holds %d messages, want 2 (the duplicate dropped by Nats-Msg-Id)", n)
	}
	msgs := env.Fetch(subjects.StreamLaserSellExit, "lasersell.s1.exit.W1", 2, 2*time.Second)
	if len(msgs) != 2 || string(msgs[1].Data()) != `{"marker":true}` {
		t.Fatalf("exit stream content wrong: %d messages", len(msgs))
	}
	m := msgs[0]
	if string(m.Data()) != string(payload) {
		t.Fatalf("payload changed: %q", m.Data())
	}
	h := m.Headers()
	want := map[string]string{
		subjects.HeaderMsgID: "exit-1", subjects.HeaderSource: "lasersell", subjects.HeaderSession: "s1",
		subjects.HeaderType: "exit_signal_with_tx", subjects.HeaderUpstreamSession: "42",
		subjects.HeaderReceived: "2026-01-02T03:04:05.000006789Z", subjects.HeaderSeq: "1",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	pnl := env.Fetch(subjects.StreamLaserSellPnL, "lasersell.s1.pnl.7", 1, 2*time.Second)
	if len(pnl) != 1 || pnl[0].Headers().Get(subjects.HeaderSeq) != "1" || pnl[0].Headers().Get(subjects.HeaderMsgID) != "" {
		t.Fatalf("pnl message missing or with wrong headers: %d", len(pnl))
	}
}

// CONNECTOR_LOW_LANE_RECEIVED=false: low-lane telemetry carries
// Connector-Seq alone; the high lane keeps every header.
func TestLowLaneWithoutReceivedKeepsSeq(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{LowLaneNoReceived: true})
	src := newEcho(t, env, "s9", connector.LaneSizes{})
	env.Run()
	ctx := context.Background()
	for range 2 {
		_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("s9", "7"), Lane: connector.LaneLow,
			Payload: []byte(`{"type":"pnl_update"}`), Type: "pnl_update"})
	}
	_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("s9", "W1"), Lane: connector.LaneHigh,
		Payload: []byte(`{}`), MsgID: "exit-9", Type: "exit_signal_with_tx"})
	pnl := env.Fetch(subjects.StreamLaserSellPnL, "lasersell.s9.pnl.7", 2, 2*time.Second)
	if len(pnl) != 2 {
		t.Fatalf("%d pnl messages stored, want 2", len(pnl))
	}
	for i, m := range pnl {
		h := m.Headers()
		if len(h) != 1 || h.Get(subjects.HeaderSeq) != strconv.Itoa(i+1) {
			t.Errorf("pnl message %d headers %v, want %s: %d alone", i+1, h, subjects.HeaderSeq, i+1)
		}
	}
	exits := env.Fetch(subjects.StreamLaserSellExit, "lasersell.s9.exit.W1", 1, 2*time.Second)
	if len(exits) != 1 || exits[0].Headers().Get(subjects.HeaderReceived) == "" {
		t.Fatalf("the high lane lost Connector-Received: %d messages", len(exits))
	}
}

func TestCommandsReplyAndAudit(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	src := newEcho(t, env, "s2", connector.LaneSizes{})
	env.Run()
	cmd := func(c string) string { return subjects.Command("lasersell", "s2", c) }

	r := env.Request(cmd("echo"), `{"word":"hi"}`, 2*time.Second)
	if !r.OK || r.Raw["echo"] != "hi" {
		t.Fatalf("echo reply: %+v", r.Raw)
	}
	for _, tc := range []struct{ cmd, body, code string }{
		{"echo", `{"word":`, connector.CodeInvalidJSON},
		{"echo", `[1]`, connector.CodeInvalidJSON},
		{"echo", `{"word":"x","extra":1}`, connector.CodeInvalidJSON},
		{"refuse", `{}`, "no_way"},
		{"fail", `{}`, connector.CodeInternal},
		{"no_such_command", `{}`, connector.CodeUnknownCommand},
	} {
		r := env.Request(cmd(tc.cmd), tc.body, 2*time.Second)
		if r.OK || r.Error == nil || r.Error.Code != tc.code || r.Error.Message == "" {
			t.Errorf("%s %s: reply %+v, want code %s", tc.cmd, tc.body, r.Raw, tc.code)
		}
	}
	// Seven: the unknown command's refusal is audited too.
	if n := env.WaitCount(subjects.StreamAudit, "lasersell.s2.audit.>", 7, 3*time.Second); n != 7 {
		t.Fatalf("audit stream holds %d records, want 7", n)
	}
	audit := env.Fetch(subjects.StreamAudit, "lasersell.s2.audit.refuse", 1, time.Second)
	var rec struct {
		Command string          `json:"command"`
		Request json.RawMessage `json:"request"`
		Reply   struct {
			OK    bool `json:"ok"`
			Error struct{ Code string }
		} `json:"reply"`
	}
	if err := json.Unmarshal(audit[0].Data(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Command != "refuse" || rec.Reply.OK || rec.Reply.Error.Code != "no_way" || string(rec.Request) != "{}" {
		t.Fatalf("audit record: %s", audit[0].Data())
	}
	// A plain publish (no reply subject) is handled and audited too.
	if err := env.Conn.Publish(cmd("echo"), []byte(`{"word":"fire-and-forget"}`)); err != nil {
		t.Fatal(err)
	}
	connectortest.Eventually(t, 2*time.Second, "the no-reply command to be handled", func() bool {
		src.mu.Lock()
		defer src.mu.Unlock()
		last := src.handled[len(src.handled)-1]
		return string(last.Body) == `{"word":"fire-and-forget"}` && !last.WantsReply
	})
}

func TestStatusPublishedAndKeptInKV(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	src := newEcho(t, env, "s3", connector.LaneSizes{})
	stop := env.Run()
	if err := src.host.SetStatus(context.Background(), connector.Status{State: connector.StateConnected, UpstreamSession: "9", Detail: map[string]int{"hi_capacity": 5}}); err != nil {
		t.Fatal(err)
	}
	msgs := env.Fetch(subjects.StreamLaserSellEvents, "lasersell.s3.status", 1, 2*time.Second)
	if len(msgs) != 1 {
		t.Fatal("no status event")
	}
	var doc map[string]any
	_ = json.Unmarshal(msgs[0].Data(), &doc)
	if doc["state"] != "connected" || doc["upstream_session"] != "9" || doc["source"] != "lasersell" {
		t.Fatalf("status %s", msgs[0].Data())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	kv, err := env.JS.KeyValue(context.Background(), subjects.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "lasersell.s3")
	if err != nil || string(e.Value()) != string(msgs[0].Data()) {
		t.Fatalf("status KV entry %v: %v", e, err)
	}
}

func TestLowLaneDropsOldestWhileHighLaneKeepsEverything(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	src := newEcho(t, env, "s4", connector.LaneSizes{High: 4, Low: 8})
	ctx := context.Background()
	env.Run()
	for i := 0; i < 5000; i++ {
		_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("s4", "1"), Lane: connector.LaneLow,
			Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`)})
	}
	for i := 0; i < 50; i++ {
		if err := src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("s4", "W"), Lane: connector.LaneHigh,
			Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := env.WaitCount(subjects.StreamLaserSellExit, "lasersell.s4.exit.W", 50, 5*time.Second); n != 50 {
		t.Fatalf("high lane stored %d of 50", n)
	}
	exits := env.Fetch(subjects.StreamLaserSellExit, "lasersell.s4.exit.W", 50, 2*time.Second)
	for i, m := range exits {
		if string(m.Data()) != `{"i":`+strconv.Itoa(i)+`}` {
			t.Fatalf("exit %d out of order: %s", i, m.Data())
		}
	}
	// The low lane kept the newest events: the last one emitted is stored,
	// and the burst (5000 into a lane of 8) was thinned by counted drops.
	connectortest.Eventually(t, 5*time.Second, "the newest pnl to be stored", func() bool {
		msgs := env.Fetch(subjects.StreamLaserSellPnL, "lasersell.s4.pnl.1", 5000, 200*time.Millisecond)
		return len(msgs) > 0 && string(msgs[len(msgs)-1].Data()) == `{"n":4999}`
	})
	stored := env.Count(subjects.StreamLaserSellPnL, "lasersell.s4.pnl.1")
	dropped := env.Metric("connector_lane_dropped_total")
	if dropped == 0 || stored >= 5000 || float64(stored)+dropped != 5000 {
		t.Fatalf("stored %d + dropped %v should be 5000 with drops", stored, dropped)
	}
}

// Sessions share one low-lane publisher but not their queues: a flood in one
// session drops only its own oldest telemetry.
func TestLowLaneFloodStaysInItsSession(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	noisy := newEcho(t, env, "noisy", connector.LaneSizes{Low: 8})
	quiet := newEcho(t, env, "quiet", connector.LaneSizes{Low: 8})
	env.Run()
	ctx := context.Background()
	for i := 0; i < 5000; i++ {
		_ = noisy.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("noisy", "1"), Lane: connector.LaneLow, Payload: []byte(`{}`)})
		if i%1000 == 0 {
			_ = quiet.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("quiet", "1"), Lane: connector.LaneLow,
				Payload: []byte(`{"i":` + strconv.Itoa(i/1000) + `}`)})
		}
	}
	if n := env.WaitCount(subjects.StreamLaserSellPnL, "lasersell.quiet.pnl.1", 5, 5*time.Second); n != 5 {
		t.Fatalf("the quiet session lost telemetry: %d of 5 stored", n)
	}
	for i, m := range env.Fetch(subjects.StreamLaserSellPnL, "lasersell.quiet.pnl.1", 5, time.Second) {
		if string(m.Data()) != `{"i":`+strconv.Itoa(i)+`}` || m.Headers().Get(subjects.HeaderSeq) != strconv.Itoa(i+1) {
			t.Fatalf("quiet message %d: %s seq %s", i, m.Data(), m.Headers().Get(subjects.HeaderSeq))
		}
	}
	connectortest.Eventually(t, 5*time.Second, "the noisy session to settle", func() bool {
		return float64(env.Count(subjects.StreamLaserSellPnL, "lasersell.noisy.pnl.1"))+env.Metric("connector_lane_dropped_total") == 5000
	})
}
