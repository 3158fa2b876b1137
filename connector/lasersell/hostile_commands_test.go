package lasersell

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// hostileRig is a connected session whose initial configure the simulator
// has received; it returns the command frames seen so far.
func hostileRig(t *testing.T, opts connectortest.Options) (*rig, *sim.Server, map[string]int) {
	t.Helper()
	s := startSim(t, sim.Config{})
	r := runWith(t, testConfig(s.URL()), opts)
	r.waitConnected()
	waitFrame(t, s, 1, typeConfigure, nil)
	return r, s, commandFrames(s)
}

// Hostile requests are refused with their code before anything is sent
// upstream; accepted ones reach it as one re-encoded frame each, with
// injected text carried as data; every refusal is counted and audited.
func TestHostileCommandsNeverReachTheServer(t *testing.T) {
	t.Parallel()
	r, s, before := hostileRig(t, connectortest.Options{CommandMaxBytes: 4096})
	good := `"strategy":{"target_profit_pct":10}`
	cases := []struct{ cmd, body, code string }{
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `,"wallet_pubkeys":["` + walletB + `"]}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `,"Strategy":{"stop_loss_pct":1}}`, connector.CodeInvalidJSON},
		{typeConfigure, "{\"wallet_pubkeys\":[\"\xff\xfe\"]," + good + "}", connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `}` + "\n" + `{"type":"close_position","position_id":1}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `,"type":"close_position"}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `\n{\"type\":\"close_position\"}"],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `\u2028"],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":["` + strings.Repeat("A", 129) + `"],` + good + `}`, CodeInvalidWallets},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],"strategy":{"target_profit_pct":[10]}}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `,"tip_lamports":-1}`, connector.CodeInvalidJSON},
		{typeConfigure, `{"wallet_pubkeys":["` + walletA + `"],` + good + `,"send_mode":"rpc\n"}`, CodeInvalidSendMode},
		{typeConfigure, `{"wallet_pubkeys":` + `["` + strings.Repeat(walletA+`","`, 100) + walletB + `"],` + good + `}`, connector.CodeRequestTooLarge},
		{typeUpdateWallets, `{"wallet_pubkeys":["` + walletA + `"],"wallet_pubkeys":["` + walletB + `"]}`, connector.CodeInvalidJSON},
		{typeClosePosition, `{"position_id":"1"}`, connector.CodeInvalidJSON},
		{typeClosePosition, `{"position_id":-1}`, connector.CodeInvalidJSON},
		{typeClosePosition, `{"position_id":1.5}`, connector.CodeInvalidJSON},
		{typeClosePosition, `{"token_account":"acc\n{\"type\":\"configure\"}"}`, CodeInvalidPositionSelector},
		{typeClosePosition, `{"position_id":1,"slippage_bps":5}`, connector.CodeInvalidJSON},
		{typeRequestExitSignal, `{"position_id":1,"slippage_bps":65536}`, CodeInvalidSlippage},
		{typeRequestExitSignal, `{"position_id":1,"POSITION_ID":2}`, connector.CodeInvalidJSON},
		{typeRequestExitSignal, `{"position_id":1}{"position_id":2}`, connector.CodeInvalidJSON},
		{typePing, `{"client_time_ms":-5}`, connector.CodeInvalidJSON},
		{typePing, `{"client_time_ms":1,"type":"configure"}`, connector.CodeInvalidJSON},
	}
	want := map[string]int{}
	for _, tc := range cases {
		rep := r.request(tc.cmd, tc.body)
		if rep.OK || rep.Error == nil || rep.Error.Code != tc.code {
			t.Errorf("%s %.80q: want %s, got %+v", tc.cmd, tc.body, tc.code, rep.Raw)
			continue
		}
		want[tc.code]++
	}
	if after := commandFrames(s); !maps.Equal(after, before) {
		t.Fatalf("refused commands reached the server: before %v, after %v", before, after)
	}

	// Accepted with injected text inside a string: one frame, the text as data.
	injected := "acc\"}\",\"type\":\"configure\",\"x\":{\"a\":\"" // no control characters: a valid key
	// Only open positions are forwarded: track one with that token account
	// (of a wallet outside the configure, so reconciliation leaves it alone).
	r.src.mu.Lock()
	r.src.positions[777] = &position{PositionID: 777, WalletPubkey: walletC, Mint: mintA, TokenAccount: injected}
	r.src.mu.Unlock()
	rep := r.request(typeRequestExitSignal, `{"token_account":`+mustJSON(t, injected)+`}`)
	if !rep.OK {
		t.Fatalf("request_exit_signal: %+v", rep.Raw)
	}
	f, body := waitFrame(t, s, 1, typeRequestExitSignal, nil)
	if body["token_account"] != injected || len(body) != 2 {
		t.Fatalf("frame %q", f.Raw)
	}
	after := commandFrames(s)
	before[typeRequestExitSignal]++
	if !maps.Equal(after, before) {
		t.Fatalf("frames: want %v, got %v", before, after)
	}

	for code, n := range want {
		if got := r.env.MetricWhere("connector_commands_total", map[string]string{"session": session, "outcome": code}); got != float64(n) {
			t.Errorf("%s counted %v times, want %d", code, got, n)
		}
	}
	filter := "lasersell." + session + ".audit.>"
	r.env.WaitCount(subjects.StreamAudit, filter, uint64(len(cases)+1), wait)
	audited := r.env.AuditedRefusals(filter)
	for code, n := range want {
		if audited[code] != n {
			t.Errorf("%s audited %d times, want %d", code, audited[code], n)
		}
	}
}

// A flood of close_position publishes beyond the rate limit: the excess is
// refused before the source, so only the admitted ones reach the server.
func TestHostileCommandFloodIsRateLimited(t *testing.T) {
	t.Parallel()
	const rate, burst = 10, 20
	r, s, before := hostileRig(t, connectortest.Options{CommandRate: rate, CommandBurst: burst})
	// Only open positions are forwarded: track position 1 (of a wallet outside
	// the configure, so reconciliation leaves it alone).
	r.src.mu.Lock()
	r.src.positions[1] = &position{PositionID: 1, WalletPubkey: walletC, Mint: mintA}
	r.src.mu.Unlock()
	subj := subjects.Command(subjects.KindLaserSell, session, typeClosePosition)
	start := time.Now()
	const floods = 1000
	for i := 0; i < floods; i++ {
		if err := r.env.Conn.Publish(subj, []byte(`{"position_id":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	connectortest.Eventually(t, wait, "every command counted", func() bool {
		return r.env.MetricWhere("connector_commands_total", map[string]string{"session": session, "command": typeClosePosition}) == floods
	})
	elapsed := time.Since(start)
	admitted := int(r.env.MetricWhere("connector_commands_total", map[string]string{"session": session, "outcome": "ok"}))
	limited := int(r.env.MetricWhere("connector_commands_total", map[string]string{"session": session, "outcome": connector.CodeRateLimited}))
	if admitted < burst || admitted > burst+int(elapsed.Seconds()*rate)+1 || admitted+limited != floods {
		t.Fatalf("admitted %d, rate_limited %d in %s", admitted, limited, elapsed)
	}
	connectortest.Eventually(t, wait, "admitted frames at the server", func() bool {
		return commandFrames(s)[typeClosePosition] == before[typeClosePosition]+admitted
	})
	connectortest.Eventually(t, 10*time.Second, "every rate_limited refusal audited", func() bool {
		return r.env.AuditedRefusals("lasersell." + session + ".audit." + typeClosePosition)[connector.CodeRateLimited] == limited
	})
}

// A command for a session this connector does not run gets unknown_session
// at once, naming the sessions it runs.
func TestHostileCommandUnknownSession(t *testing.T) {
	t.Parallel()
	r, s, before := hostileRig(t, connectortest.Options{})
	start := time.Now()
	rep := r.env.Request(subjects.Command(subjects.KindLaserSell, "other", typeClosePosition), `{"position_id":1}`, 2*time.Second)
	if rep.OK || rep.Error == nil || rep.Error.Code != connector.CodeUnknownSession || !strings.Contains(rep.Error.Message, session) {
		t.Fatalf("reply %+v", rep.Raw)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("unknown_session took %s", took)
	}
	if n := r.env.WaitCount(subjects.StreamAudit, "lasersell.other.audit."+typeClosePosition, 1, wait); n != 1 {
		t.Fatalf("audit records: %d", n)
	}
	if after := commandFrames(s); !maps.Equal(after, before) {
		t.Fatalf("a command for another session reached the server: %v", after)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
