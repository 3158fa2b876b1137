package lasersell

// Upstream faults injected with a loopback fault proxy between the source and
// the simulator: abrupt drops, half-open connections, a peer that never sends
// hello_ok, a refused API key, a slow link, a stall inside a frame and
// corrupted bytes. After each fault the session must recover by itself and
// later events must reach JetStream, once.
//
// Each test logs its measured detection and recovery times ("measured: ...").

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/internal/faultproxy"
	"github.com/jetbridge/connector/subjects"
)

// faultRig is a source connected to a simulator through a fault proxy, on a
// runtime whose logs (every level) are also captured in logs. A rig of
// startLoggedRig has neither simulator nor proxy.
type faultRig struct {
	*rig
	sim   *sim.Server
	proxy *faultproxy.Proxy
	logs  *connectortest.Buffer
}

// startFaultRig starts the simulator, the proxy in front of it and the
// runtime with the source, whose configuration mut may change.
func startFaultRig(t *testing.T, simCfg sim.Config, mut func(*Config)) *faultRig {
	t.Helper()
	s := startSim(t, simCfg)
	u, err := url.Parse(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.New(u.Host, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	cfg := testConfig(u.String())
	if mut != nil {
		mut(&cfg)
	}
	r := startLoggedRig(t, cfg)
	r.sim, r.proxy = s, p
	return r
}

// startLoggedRig runs the source of cfg on a runtime whose logs (every level)
// are captured; it has no simulator nor proxy of its own.
func startLoggedRig(t *testing.T, cfg Config) *faultRig {
	t.Helper()
	env := connectortest.Start(t, connectortest.Options{CommandTimeout: 5 * time.Second})
	// A runtime of our own, to capture every log line the source writes.
	logs := &connectortest.Buffer{}
	out := io.MultiWriter(zerolog.ConsoleWriter{Out: logs, NoColor: true}, zerolog.ConsoleWriter{Out: tWriter{t}, NoColor: true})
	replaceRuntime(t, env, zerolog.New(out).Level(zerolog.TraceLevel).With().Timestamp().Logger())
	return &faultRig{rig: startRig(t, env, cfg), logs: logs}
}

// replaceRuntime gives env a LaserSell-only runtime of its own that logs to
// log, with a fresh metrics registry.
func replaceRuntime(t testing.TB, env *connectortest.Env, log zerolog.Logger) {
	t.Helper()
	env.Registry = prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt, err := connector.New(ctx, connector.Options{
		HighConn: env.Connect(), LowConn: env.Connect(), CommandTimeout: 5 * time.Second,
		Kinds:   []subjects.Kind{subjects.LaserSell()},
		Metrics: connector.NewMetrics(env.Registry),
		Log:     log,
	})
	if err != nil {
		t.Fatal(err)
	}
	env.Runtime = rt
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// statusAt is one stored status event.
type statusAt struct {
	State, Reason, Code string
	BackoffMS           int64
	At                  time.Time
}

func (r *faultRig) timeline() []statusAt {
	r.t.Helper()
	var out []statusAt
	for _, d := range r.statusDocs() {
		st := statusAt{}
		st.State, _ = d["state"].(string)
		st.Reason, _ = d["reason"].(string)
		if det, ok := d["detail"].(map[string]any); ok {
			st.Code, _ = det["reason_code"].(string)
		}
		if b, ok := d["backoff_ms"].(float64); ok {
			st.BackoffMS = int64(b)
		}
		ts, _ := d["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			r.t.Fatalf("status time %q: %v", ts, err)
		}
		st.At = at
		out = append(out, st)
	}
	return out
}

// waitStatus waits for the first status at or after since in state (and with
// code, when given) and returns it.
func (r *faultRig) waitStatus(since time.Time, state, code string, within time.Duration) statusAt {
	r.t.Helper()
	var found statusAt
	connectortest.Eventually(r.t, within, fmt.Sprintf("status %s %s", state, code), func() bool {
		for _, st := range r.timeline() {
			if !st.At.Before(since) && st.State == state && (code == "" || st.Code == code) {
				found = st
				return true
			}
		}
		return false
	})
	return found
}

// configuredConn waits until the simulator's newest session has its
// configure, so that a fact sent now reaches the current connection.
func (r *faultRig) configuredConn() int {
	r.t.Helper()
	n := r.sim.Connections()
	waitFrame(r.t, r.sim, n, "configure", nil)
	connectortest.Eventually(r.t, wait, "one simulator session", func() bool { return r.sim.ActiveSessions() == 1 })
	return n
}

// exitCount is the number of exit signals stored for walletA.
func (r *faultRig) exitCount() uint64 {
	return r.env.Count(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA)
}

// sendExit sends an exit signal for position id on the current connection
// and waits until want exit signals are stored; it returns when the last was
// stored (measured by the test's clock).
func (r *faultRig) sendExit(id uint64, want uint64) time.Time {
	r.t.Helper()
	if err := r.sim.SendExitSignal(id, "stop_loss"); err != nil {
		r.t.Fatal(err)
	}
	if got := r.env.WaitCount(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA, want, wait); got != want {
		r.t.Fatalf("exit signals stored: %d, want %d", got, want)
	}
	return time.Now()
}

// positionOpenedOnce asserts that every open position is stored exactly once
// although each reconnect re-announced it (Nats-Msg-Id dedup).
func (r *faultRig) positionOpenedOnce(ids ...uint64) {
	r.t.Helper()
	for _, id := range ids {
		subj := fmt.Sprintf("lasersell.%s.event.position_opened.%d", session, id)
		if n := r.env.Count(subjects.StreamLaserSellEvents, subj); n != 1 {
			r.t.Fatalf("position_opened %d stored %d times, want once", id, n)
		}
	}
}

// reconnects reads connector_upstream_reconnects_total for one reason code.
func (r *faultRig) reconnects(code string) float64 {
	r.t.Helper()
	return r.env.MetricWhere("connector_upstream_reconnects_total", map[string]string{"reason": code})
}

// noMalformed asserts that no partial or broken frame was published.
func (r *faultRig) noMalformed() {
	r.t.Helper()
	if n := r.env.Count(subjects.StreamLaserSellEvents, "lasersell."+session+".malformed"); n != 0 {
		r.t.Fatalf("%d malformed frames published", n)
	}
}

// An abrupt drop (TCP reset from the proxy) is seen at once, reconnected after
// the first backoff step; the positions the server re-announces are stored
// once, and exit signals after the drop flow.
func TestFaultAbruptDropRecovers(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, nil)
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)
	r.sendExit(pos, 1)

	for round := 1; round <= 2; round++ {
		cut := time.Now()
		r.proxy.Cut(round == 1) // RST first, then FIN
		down := r.waitStatus(cut, connector.StateDisconnected, connector.ReasonClosedByPeer, wait)
		up := r.waitStatus(cut, connector.StateConnected, "", wait)
		r.configuredConn()
		stored := r.sendExit(pos, uint64(1+round))
		t.Logf("measured: drop (rst=%v) detected after %s, reconnected after %s, exit stored %s after the drop",
			round == 1, down.At.Sub(cut), up.At.Sub(cut), stored.Sub(cut))
	}
	r.positionOpenedOnce(pos)
	r.noMalformed()
	if got := r.reconnects(connector.ReasonClosedByPeer); got != 2 {
		t.Fatalf("reconnects{reason=closed_by_peer} = %v, want 2", got)
	}
}

// A half-open connection (no byte either way, no FIN) is detected by the
// read deadline: nothing is received, not even the pong of the periodic ping,
// so the session ends at most LASERSELL_READ_TIMEOUT after the last frame.
// While the proxy stays stalled the new connection cannot complete its
// upgrade (handshake_timeout after LASERSELL_DIAL_TIMEOUT); once the path
// heals the session recovers by itself.
func TestFaultHalfOpenDetectedByReadTimeout(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.PingInterval = 100 * time.Millisecond
		c.ReadTimeout = 400 * time.Millisecond
		c.DialTimeout = 300 * time.Millisecond
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)
	r.sendExit(pos, 1)
	// Pings keep a quiet session alive: no read timeout without the fault.
	time.Sleep(3 * r.src.cfg.ReadTimeout)
	if n := r.reconnects(connector.ReasonReadTimeout); n != 0 {
		t.Fatalf("a healthy quiet session timed out %v times", n)
	}

	stall := time.Now()
	r.proxy.Stall(faultproxy.Both)
	down := r.waitStatus(stall, connector.StateDisconnected, connector.ReasonReadTimeout, wait)
	detect := down.At.Sub(stall)
	// Bound: the read deadline, armed at the last frame received (<= the
	// stall), plus scheduling slack on a loaded 2-core machine.
	if bound := r.src.cfg.ReadTimeout + time.Second; detect > bound {
		t.Fatalf("half-open detected after %s, bound %s", detect, bound)
	}
	// Still stalled: the next connection is stuck in its upgrade.
	r.waitStatus(stall, connector.StateDisconnected, connector.ReasonHandshakeTimeout, wait)

	heal := time.Now()
	before := r.sim.Connections()
	r.proxy.Resume()
	up := r.waitStatus(heal, connector.StateConnected, "", wait)
	// The abandoned upgrade the proxy held may reach the simulator after the
	// live connection, so wait for a configure on any connection since the heal.
	waitFrame(r.t, r.sim, before+1, "configure", nil)
	connectortest.Eventually(r.t, wait, "one simulator session", func() bool { return r.sim.ActiveSessions() == 1 })
	stored := r.sendExit(pos, 2)
	t.Logf("measured: half-open detected after %s (read timeout %s), recovered %s after the path healed, exit stored %s after",
		detect, r.src.cfg.ReadTimeout, up.At.Sub(heal), stored.Sub(heal))
	r.positionOpenedOnce(pos)
	r.noMalformed()
}

// A server that accepts the WebSocket but never sends hello_ok (nor answers
// anything) ends the connection LASERSELL_DIAL_TIMEOUT after the configure was
// written (handshake_timeout), with growing backoff; a peer that accepts TCP
// but never answers the upgrade ends the same way. Once the server answers,
// the session recovers.
func TestFaultNoHelloHandshakeTimeout(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.DialTimeout = 500 * time.Millisecond
		c.BackoffBase = 50 * time.Millisecond
		c.BackoffMax = 400 * time.Millisecond
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)

	r.sim.SetWithholdHello(true)
	cut := time.Now()
	r.proxy.Cut(false)
	r.waitStatus(cut, connector.StateDisconnected, connector.ReasonHandshakeTimeout, wait)
	// Three handshake timeouts in a row: the backoff grows between them.
	// Read from the stream: the metric counts a reconnect before its status is stored.
	var backoffs []int64
	connectortest.Eventually(t, 3*wait, "three handshake timeouts", func() bool {
		backoffs = backoffs[:0]
		for _, st := range r.timeline() {
			if st.State == connector.StateReconnecting && st.Code == connector.ReasonHandshakeTimeout && !st.At.Before(cut) {
				backoffs = append(backoffs, st.BackoffMS)
			}
		}
		return len(backoffs) >= 3
	})
	for i := 1; i < len(backoffs); i++ {
		if backoffs[i] < backoffs[i-1] {
			t.Fatalf("backoff shrank between handshake timeouts: %v", backoffs)
		}
	}
	if len(backoffs) < 3 || backoffs[2] <= backoffs[0] {
		t.Fatalf("backoff did not grow: %v", backoffs)
	}
	// Under load an upgrade may itself exceed the dial timeout (same code,
	// other text): look for the missing hello_ok among them.
	var first statusAt
	for _, st := range r.timeline() {
		if st.State == connector.StateDisconnected && st.Code == connector.ReasonHandshakeTimeout && !st.At.Before(cut) &&
			strings.Contains(st.Reason, "hello_ok") {
			first = st
			break
		}
	}
	if first.At.IsZero() {
		t.Fatalf("no handshake_timeout status says hello_ok was missing: %+v", r.timeline())
	}

	// A black hole: TCP accepted, the upgrade never answered.
	r.sim.SetWithholdHello(false)
	r.proxy.Blackhole(true)
	hole := time.Now()
	r.proxy.Cut(false)
	bh := r.waitStatus(hole, connector.StateDisconnected, connector.ReasonHandshakeTimeout, wait)
	if !strings.Contains(bh.Reason, "upgrade") {
		t.Fatalf("black hole reason %q does not name the upgrade", bh.Reason)
	}

	heal := time.Now()
	r.proxy.Blackhole(false)
	up := r.waitStatus(heal, connector.StateConnected, "", 2*wait)
	r.configuredConn()
	stored := r.sendExit(pos, 1)
	t.Logf("measured: missing hello_ok detected %s after the reconnect began (dial timeout %s), backoffs %v ms; recovered %s after the peer answered, exit stored %s after",
		first.At.Sub(cut), r.src.cfg.DialTimeout, backoffs, up.At.Sub(heal), stored.Sub(heal))
	r.positionOpenedOnce(pos)
}

// A refused API key (HTTP 401): the status says so with reason_code auth, the
// retries back off up to 15 x LASERSELL_BACKOFF_MAX (no hot loop: connection
// attempts over a window stay within the schedule), the key never appears in
// logs or status, and a fixed key recovers the session.
func TestFaultAuthRejectedSlowsDown(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.BackoffBase = 10 * time.Millisecond
		c.BackoffMax = 50 * time.Millisecond // auth cap: 750 ms
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)

	r.sim.SetAPIKey("another-key-entirely")
	start := time.Now()
	refusedBefore := r.sim.Stats().Refused
	r.proxy.Cut(false)
	first := r.waitStatus(start, connector.StateDisconnected, connector.ReasonAuth, wait)
	if !strings.Contains(first.Reason, "401") {
		t.Fatalf("auth status reason %q does not carry the HTTP status", first.Reason)
	}
	const window = 2500 * time.Millisecond
	time.Sleep(window - time.Since(start))
	attempts := r.sim.Stats().Refused - refusedBefore
	// The schedule 10, 20, 40, ..., 640, 750, 750 ms allows at most 10
	// attempts in 2.5 s; the plain cap of 50 ms would allow about 50.
	if attempts < 4 || attempts > 10 {
		t.Fatalf("%d refused attempts in %s, want 4..10", attempts, window)
	}
	var backoffs []int64
	for _, st := range r.timeline() {
		if st.State == connector.StateReconnecting && st.Code == connector.ReasonAuth {
			backoffs = append(backoffs, st.BackoffMS)
		}
	}
	last := backoffs[len(backoffs)-1]
	if last <= r.src.cfg.BackoffMax.Milliseconds() || last > slowBackoffFactor*r.src.cfg.BackoffMax.Milliseconds() {
		t.Fatalf("auth backoff reached %d ms, want above %s and at most %d x", last, r.src.cfg.BackoffMax, slowBackoffFactor)
	}
	if r.reconnects(connector.ReasonAuth) < 4 {
		t.Fatalf("reconnects{reason=auth} = %v", r.reconnects(connector.ReasonAuth))
	}

	fixed := time.Now()
	r.sim.SetAPIKey(testKey)
	up := r.waitStatus(fixed, connector.StateConnected, "", wait)
	r.configuredConn()
	stored := r.sendExit(pos, 1)
	t.Logf("measured: auth refusal reported %s after the drop; %d attempts in %s, backoffs %v ms; recovered %s after the key was accepted again, exit stored %s after",
		first.At.Sub(start), attempts, window, backoffs, up.At.Sub(fixed), stored.Sub(fixed))

	// The key never leaks: not in any log line, status event or status KV entry.
	if strings.Contains(r.logs.String(), testKey) {
		t.Fatal("the API key appears in the logs")
	}
	for _, m := range r.statuses() {
		if bytes.Contains(m.Data(), []byte(testKey)) {
			t.Fatal("the API key appears in a status event")
		}
	}
	doc, err := json.Marshal(r.env.Runtime.Statuses())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(doc, []byte(testKey)) {
		t.Fatal("the API key appears in the last status")
	}
	if !strings.Contains(r.logs.String(), "check the API key") {
		t.Fatal("the logs do not say the key was refused")
	}
}

// A very slow link (4 KiB/s, 10 ms per chunk) delays frames but the session
// survives (frames keep arriving within the read timeout) and nothing is lost
// or duplicated.
func TestFaultSlowUpstreamLosesNothing(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.PingInterval = 200 * time.Millisecond
		c.ReadTimeout = 1500 * time.Millisecond
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)

	r.proxy.Slow(faultproxy.Downstream, 4096, 10*time.Millisecond)
	start := time.Now()
	const exits = 5
	for range exits {
		if err := r.sim.SendExitSignal(pos, "trailing_stop"); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.env.WaitCount(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA, exits, 4*wait); got != exits {
		t.Fatalf("exit signals stored through the slow link: %d, want %d", got, exits)
	}
	took := time.Since(start)
	r.proxy.Reset()
	for _, st := range r.timeline() {
		if st.State == connector.StateDisconnected {
			t.Fatalf("the slow link ended the session: %+v", st)
		}
	}
	// Each exit signal is its own fact: stored once each, in order.
	msgs := r.fetch(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA, exits)
	var prev float64
	for i, m := range msgs {
		var ev struct {
			TriggeredAtMs float64 `json:"triggered_at_ms"`
		}
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if i > 0 && ev.TriggeredAtMs < prev {
			t.Fatalf("exit signals reordered: %v after %v", ev.TriggeredAtMs, prev)
		}
		prev = ev.TriggeredAtMs
	}
	t.Logf("measured: %d exit signals through a 4 KiB/s link in %s, no disconnect", exits, took)
	r.noMalformed()
}

// A server that stalls inside a frame: the read deadline fires, the partial
// frame is never published (neither as an event nor as malformed), the
// session reconnects and later frames flow.
func TestFaultStallMidFrameNeverPublishesPartial(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.PingInterval = 100 * time.Millisecond
		c.ReadTimeout = 400 * time.Millisecond
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)
	r.sendExit(pos, 1)

	// 40 bytes: the WebSocket header and the start of the next frame.
	stall := time.Now()
	r.proxy.StallAfter(faultproxy.Downstream, 40)
	if err := r.sim.SendExitSignal(pos, "stop_loss"); err != nil {
		t.Fatal(err)
	}
	down := r.waitStatus(stall, connector.StateDisconnected, connector.ReasonReadTimeout, wait)
	heal := time.Now()
	r.proxy.Resume()
	up := r.waitStatus(heal, connector.StateConnected, "", wait)
	r.configuredConn()
	// The exit cut in half was lost on the dead connection (the server does
	// not re-send exit signals); the next one is stored, once.
	stored := r.sendExit(pos, 2)
	if n := r.exitCount(); n != 2 {
		t.Fatalf("%d exit signals stored, want 2 (the partial one must not appear)", n)
	}
	r.noMalformed()
	r.positionOpenedOnce(pos)
	t.Logf("measured: mid-frame stall detected after %s (read timeout %s), recovered %s after the path healed, exit stored %s after",
		down.At.Sub(stall), r.src.cfg.ReadTimeout, up.At.Sub(heal), stored.Sub(heal))
}

// Corrupted bytes from upstream (seeded, 1 in 500 under a PnL flood) end as
// malformed frames or a reconnect with a protocol/peer/timeout reason, never
// a crash; once the corruption stops, the session recovers and exit signals
// flow.
func TestFaultCorruptBytesNeverCrash(t *testing.T) {
	r := startFaultRig(t, sim.Config{}, func(c *Config) {
		c.PingInterval = 100 * time.Millisecond
		c.ReadTimeout = 400 * time.Millisecond
	})
	r.waitConnected()
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)

	start := time.Now()
	r.proxy.Corrupt(faultproxy.Downstream, 0.002)
	r.sim.SetPnLRate(500)
	damaged := func() bool {
		return r.env.Count(subjects.StreamLaserSellEvents, "lasersell."+session+".malformed") > 0 ||
			r.reconnects(connector.ReasonProtocol)+r.reconnects(connector.ReasonClosedByPeer)+r.reconnects(connector.ReasonReadTimeout) > 0
	}
	connectortest.Eventually(t, 2*wait, "corruption noticed (malformed frame or reconnect)", damaged)
	time.Sleep(time.Second) // let it chew on garbage a while longer
	r.sim.SetPnLRate(0)
	heal := time.Now()
	r.proxy.Reset()
	// A connection opened under corruption may still be alive and damaged:
	// start clean.
	r.proxy.Cut(false)
	up := r.waitStatus(heal, connector.StateConnected, "", wait)
	r.configuredConn()
	before := r.exitCount()
	stored := r.sendExit(pos, before+1)
	for _, st := range r.timeline() {
		if st.State == connector.StateDisconnected && st.At.After(start) {
			switch st.Code {
			case connector.ReasonProtocol, connector.ReasonClosedByPeer, connector.ReasonReadTimeout, connector.ReasonHandshakeTimeout, connector.ReasonDial:
			default:
				t.Fatalf("unexpected reason under corruption: %+v", st)
			}
		}
	}
	t.Logf("measured: corruption: %d malformed frames, reconnects protocol=%v closed_by_peer=%v read_timeout=%v; recovered %s after the corruption stopped, exit stored %s after",
		r.env.Count(subjects.StreamLaserSellEvents, "lasersell."+session+".malformed"),
		r.reconnects(connector.ReasonProtocol), r.reconnects(connector.ReasonClosedByPeer), r.reconnects(connector.ReasonReadTimeout),
		up.At.Sub(heal), stored.Sub(heal))
}
