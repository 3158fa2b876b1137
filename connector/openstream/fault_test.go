package openstream

// Upstream faults injected with a loopback fault proxy between the robot's
// connections and the simulator: abrupt drops, half-open connections, a peer
// that never answers HANDSHAKE, refused handshakes, a slow link, a stall
// inside a line and corrupted bytes. After each fault the connections must
// recover by themselves and MONITOR data must flow again.
//
// Each test logs its measured detection and recovery times ("measured: ...").

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/internal/faultproxy"
	"github.com/jetbridge/connector/subjects"
)

type faultFixture struct {
	*fixture
	proxy *faultproxy.Proxy
	cfg   Config
}

// startFaultFixture runs robotConfig (monitor "joints" at 5 ms plus the
// control connection) against s through a fault proxy.
func startFaultFixture(t *testing.T, s *sim.Server, mut func(*Config, *RobotConfig)) *faultFixture {
	t.Helper()
	p, err := faultproxy.New(s.Addr(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	cfg := testConfig()
	cfg.AckTimeout = 300 * time.Millisecond
	rc := robotConfig(p.Addr())
	if mut != nil {
		mut(&cfg, &rc)
	}
	f := start(t, s, rc, cfg, connectortest.Options{})
	return &faultFixture{fixture: f, proxy: p, cfg: cfg}
}

// osStatus is one stored status event of one connection.
type osStatus struct {
	State, Conn, Reason, Code string
	BackoffMS                 int64
	GapMS                     float64
	At                        time.Time
}

func (f *faultFixture) timeline() []osStatus {
	f.t.Helper()
	var out []osStatus
	for _, d := range f.statuses() {
		st := osStatus{}
		st.State, _ = d["state"].(string)
		st.Reason, _ = d["reason"].(string)
		det := detail(d)
		st.Conn, _ = det["conn"].(string)
		st.Code, _ = det["reason_code"].(string)
		st.GapMS, _ = det["gap_ms"].(float64)
		if b, ok := d["backoff_ms"].(float64); ok {
			st.BackoffMS = int64(b)
		}
		ts, _ := d["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			f.t.Fatalf("status time %q: %v", ts, err)
		}
		st.At = at
		out = append(out, st)
	}
	return out
}

// waitStatus waits for the first status of conn at or after since in state
// (and with code, when given).
func (f *faultFixture) waitStatus(since time.Time, conn, state, code string, within time.Duration) osStatus {
	f.t.Helper()
	var found osStatus
	connectortest.Eventually(f.t, within, fmt.Sprintf("%s status %s %s", conn, state, code), func() bool {
		for _, st := range f.timeline() {
			if !st.At.Before(since) && st.Conn == conn && st.State == state && (code == "" || st.Code == code) {
				found = st
				return true
			}
		}
		return false
	})
	return found
}

// reconnects reads connector_upstream_reconnects_total for one reason code.
func (f *faultFixture) reconnects(code string) float64 {
	f.t.Helper()
	return f.env.MetricWhere("connector_upstream_reconnects_total", map[string]string{"reason": code})
}

// dataFlowsAfter waits for 20 more data lines and returns when they were stored.
func (f *faultFixture) dataFlowsAfter() time.Time {
	f.t.Helper()
	f.waitData("joints", f.dataCount("joints")+20)
	return time.Now()
}

func (f *faultFixture) malformed() uint64 {
	return f.env.Count(subjects.StreamOpenStreamEvent, f.subject("malformed"))
}

const monConn = "monitor/joints"

// An abrupt drop of every connection (RST, then FIN) is seen at once; both
// connections reconnect immediately (first reconnect), re-HANDSHAKE and
// restore the MONITOR; data flows again.
func TestFaultAbruptDropRecovers(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, nil)
	f.waitData("joints", 20)
	for round := 1; round <= 2; round++ {
		cut := time.Now()
		f.proxy.Cut(round == 1)
		down := f.waitStatus(cut, monConn, connector.StateReconnecting, connector.ReasonClosedByPeer, waitLong)
		f.waitStatus(cut, controlConnID, connector.StateReconnecting, connector.ReasonClosedByPeer, waitLong)
		up := f.waitStatus(cut, monConn, StateStreaming, "", waitLong)
		flowing := f.dataFlowsAfter()
		t.Logf("measured: drop (rst=%v) detected after %s, streaming again after %s (gap_ms %.1f), 20 data lines stored %s after the drop",
			round == 1, down.At.Sub(cut), up.At.Sub(cut), up.GapMS, flowing.Sub(cut))
	}
	if n := f.malformed(); n != 0 {
		t.Fatalf("%d malformed lines after clean drops", n)
	}
}

// A half-open path (no byte either way, no FIN). The monitor connection sees
// no data for its stall timeout, max(OPENSTREAM_STALL_PERIODS x period_ms,
// OPENSTREAM_STALL_MIN); the control connection, which carries no data, sees
// its keepalive (sent after OPENSTREAM_IDLE_KEEPALIVE without a command) go
// unanswered for OPENSTREAM_ACK_TIMEOUT. New connections cannot HANDSHAKE
// while the path is stalled (handshake_timeout); once it heals, everything
// recovers.
func TestFaultHalfOpenDetected(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, func(c *Config, _ *RobotConfig) {
		c.IdleKeepalive = 200 * time.Millisecond
	})
	f.waitData("joints", 20)
	f.waitStatus(time.Time{}, controlConnID, connector.StateConnected, "", waitLong)
	// A healthy control connection answers its keepalives: no ping_timeout.
	time.Sleep(3 * (f.cfg.IdleKeepalive + f.cfg.AckTimeout))
	if n := f.reconnects(reasonPingTimeout); n != 0 {
		t.Fatalf("a healthy control connection was taken for dead %v times", n)
	}

	stall := time.Now()
	f.proxy.Stall(faultproxy.Both)
	mon := f.waitStatus(stall, monConn, connector.StateReconnecting, reasonStalled, waitLong)
	ctl := f.waitStatus(stall, controlConnID, connector.StateReconnecting, reasonPingTimeout, waitLong)
	tick := 250 * time.Millisecond // tickInterval's upper bound
	slack := time.Second           // scheduling on a loaded 2-core machine
	monBound := max(time.Duration(f.cfg.StallPeriods)*5*time.Millisecond, f.cfg.StallMin) + tick + slack
	ctlBound := f.cfg.IdleKeepalive + f.cfg.AckTimeout + 2*tick + slack
	if d := mon.At.Sub(stall); d > monBound {
		t.Fatalf("monitor connection: half-open detected after %s, bound %s", d, monBound)
	}
	if d := ctl.At.Sub(stall); d > ctlBound {
		t.Fatalf("control connection: half-open detected after %s, bound %s", d, ctlBound)
	}
	f.waitStatus(stall, monConn, connector.StateReconnecting, connector.ReasonHandshakeTimeout, waitLong)

	heal := time.Now()
	f.proxy.Resume()
	up := f.waitStatus(heal, monConn, StateStreaming, "", waitLong)
	f.waitStatus(heal, controlConnID, connector.StateConnected, "", waitLong)
	flowing := f.dataFlowsAfter()
	t.Logf("measured: half-open detected on the monitor connection after %s (stall timeout %s), on the control connection after %s (idle keepalive %s + ack timeout %s); streaming %s after the path healed (gap_ms %.1f), 20 data lines %s after",
		mon.At.Sub(stall), max(time.Duration(f.cfg.StallPeriods)*5*time.Millisecond, f.cfg.StallMin),
		ctl.At.Sub(stall), f.cfg.IdleKeepalive, f.cfg.AckTimeout, up.At.Sub(heal), up.GapMS, flowing.Sub(heal))
}

// A peer that accepts TCP but never answers HANDSHAKE: each attempt ends
// after OPENSTREAM_ACK_TIMEOUT (handshake_timeout) and the delays back off;
// when the peer answers again the MONITOR is restored.
func TestFaultNoHandshakeAck(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, func(c *Config, rc *RobotConfig) {
		rc.ControlAllow = nil // one connection: its attempts are easy to count
	})
	f.waitData("joints", 20)
	f.proxy.Blackhole(true)
	cut := time.Now()
	accepted := f.proxy.Accepted()
	f.proxy.Cut(false)
	first := f.waitStatus(cut, monConn, connector.StateReconnecting, connector.ReasonHandshakeTimeout, waitLong)
	// The metric counts an attempt before its status event is stored: read
	// the backoffs from the stored statuses themselves.
	var backoffs []int64
	connectortest.Eventually(t, waitLong, "three handshake timeouts stored", func() bool {
		backoffs = backoffs[:0]
		for _, st := range f.timeline() {
			if st.Conn == monConn && st.Code == connector.ReasonHandshakeTimeout && st.State == connector.StateReconnecting {
				backoffs = append(backoffs, st.BackoffMS)
			}
		}
		return len(backoffs) >= 3
	})
	if n := f.reconnects(connector.ReasonHandshakeTimeout); n < 3 {
		t.Fatalf("%d stored handshake timeouts, %v counted in the reconnect metric", len(backoffs), n)
	}
	for i := 1; i < len(backoffs); i++ {
		if backoffs[i] < backoffs[i-1] {
			t.Fatalf("backoff shrank: %v", backoffs)
		}
	}
	if len(backoffs) < 3 || backoffs[len(backoffs)-1] <= backoffs[0] {
		t.Fatalf("backoff did not grow: %v", backoffs)
	}
	// Each attempt holds AckTimeout: no hot loop.
	elapsed := time.Since(cut)
	attempts := f.proxy.Accepted() - accepted
	if maxAttempts := int64(elapsed/f.cfg.AckTimeout) + 2; attempts > maxAttempts {
		t.Fatalf("%d connection attempts in %s with a %s ack timeout", attempts, elapsed, f.cfg.AckTimeout)
	}

	heal := time.Now()
	f.proxy.Blackhole(false)
	f.proxy.Cut(false) // the held connections
	up := f.waitStatus(heal, monConn, StateStreaming, "", waitLong)
	flowing := f.dataFlowsAfter()
	t.Logf("measured: unanswered HANDSHAKE detected after %s (ack timeout %s), backoffs %v ms, %d attempts in %s; streaming %s after the peer answered, 20 data lines %s after",
		first.At.Sub(cut), f.cfg.AckTimeout, backoffs, attempts, elapsed, up.At.Sub(heal), flowing.Sub(heal))
}

// version_mismatch and handshake_rejected are reported (reason_code) and
// retried slowly: OPENSTREAM_HANDSHAKE_RETRY_MIN doubling to _MAX, never in
// a hot loop. When the controller accepts again the MONITOR is restored.
func TestFaultHandshakeRefusedRetriesSlowly(t *testing.T) {
	good := startSim(t, nil)
	mismatch := startSim(t, func(c *sim.Config) { c.Version = "2.0.0" })
	rejecting := startSim(t, func(c *sim.Config) { c.Faults.RejectHandshake = true })
	f := startFaultFixture(t, good, func(c *Config, rc *RobotConfig) { rc.ControlAllow = nil })
	f.waitData("joints", 20)

	for _, tc := range []struct {
		code string
		srv  *sim.Server
	}{{reasonVersionMismatch, mismatch}, {reasonHandshakeRejected, rejecting}} {
		f.proxy.SetTarget(tc.srv.Addr())
		start := time.Now()
		f.proxy.Cut(false)
		first := f.waitStatus(start, monConn, connector.StateReconnecting, tc.code, waitLong)
		const window = 1500 * time.Millisecond
		time.Sleep(window - time.Since(start))
		var backoffs []int64
		for _, st := range f.timeline() {
			if st.Conn == monConn && st.Code == tc.code && st.State == connector.StateReconnecting && !st.At.Before(start) {
				backoffs = append(backoffs, st.BackoffMS)
			}
		}
		// The drop's reconnect is immediate; the refusals then wait 300, 600,
		// 600 ms: at most 4 refusals in 1.5 s.
		if len(backoffs) < 2 || len(backoffs) > 4 {
			t.Fatalf("%s: %d refusals in %s (backoffs %v), want 2..4", tc.code, len(backoffs), window, backoffs)
		}
		if backoffs[0] != f.cfg.HandshakeRetryMin.Milliseconds() {
			t.Fatalf("%s: first retry after %d ms, want %s", tc.code, backoffs[0], f.cfg.HandshakeRetryMin)
		}
		for _, b := range backoffs {
			if b > f.cfg.HandshakeRetryMax.Milliseconds() {
				t.Fatalf("%s: backoff %d ms above the cap", tc.code, b)
			}
		}
		if len(backoffs) > 1 && backoffs[1] != 2*backoffs[0] {
			t.Fatalf("%s: backoffs %v do not double", tc.code, backoffs)
		}

		heal := time.Now()
		f.proxy.SetTarget(good.Addr())
		up := f.waitStatus(heal, monConn, StateStreaming, "", waitLong)
		flowing := f.dataFlowsAfter()
		t.Logf("measured: %s reported %s after the reconnect, backoffs %v ms; streaming %s after the controller accepted, 20 data lines %s after",
			tc.code, first.At.Sub(start), backoffs, up.At.Sub(heal), flowing.Sub(heal))
	}
	if f.reconnects(reasonVersionMismatch) < 2 || f.reconnects(reasonHandshakeRejected) < 2 {
		t.Fatalf("reconnect metrics: version_mismatch %v, handshake_rejected %v",
			f.reconnects(reasonVersionMismatch), f.reconnects(reasonHandshakeRejected))
	}
}

// A slow link (4 KiB/s, 20 ms per chunk) under a 10 Hz MONITOR: the session
// survives and no data line is lost (Connector-Seq has no gap).
func TestFaultSlowUpstreamLosesNothing(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, func(c *Config, rc *RobotConfig) {
		rc.ControlAllow = nil
		rc.Monitors = map[string]Recipe{"joints": {URL: pathJoints, Method: "GET", PeriodMS: 100}}
	})
	f.waitData("joints", 2)
	f.proxy.Slow(faultproxy.Downstream, 4096, 20*time.Millisecond)
	start := time.Now()
	base := f.dataCount("joints")
	f.waitData("joints", base+15)
	took := time.Since(start)
	f.proxy.Reset()
	for _, st := range f.timeline() {
		if st.State == connector.StateReconnecting {
			t.Fatalf("the slow link ended a connection: %+v", st)
		}
	}
	msgs := f.env.Fetch(subjects.StreamOpenStreamData, f.subject("data", "joints"), int(f.dataCount("joints")), waitLong)
	var prev uint64
	for i, m := range msgs {
		seq, err := strconv.ParseUint(m.Headers().Get(subjects.HeaderSeq), 10, 64)
		if err != nil {
			t.Fatalf("data message without %s: %v", subjects.HeaderSeq, err)
		}
		if i > 0 && seq != prev+1 {
			t.Fatalf("%s jumps from %d to %d: data lost", subjects.HeaderSeq, prev, seq)
		}
		prev = seq
		if !json.Valid(m.Data()) {
			t.Fatalf("data line is not JSON: %q", m.Data())
		}
	}
	t.Logf("measured: 15 data lines through a 4 KiB/s link in %s, %d lines without a sequence gap, no reconnect", took, len(msgs))
}

// A controller that stalls inside a line: the stall timeout fires, the
// partial line is never published (neither as data nor as malformed), and
// the restored MONITOR streams again.
func TestFaultStallMidLineNeverPublishesPartial(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, func(c *Config, rc *RobotConfig) { rc.ControlAllow = nil })
	f.waitData("joints", 20)
	stall := time.Now()
	f.proxy.StallAfter(faultproxy.Downstream, 7) // inside the next line
	down := f.waitStatus(stall, monConn, connector.StateReconnecting, reasonStalled, waitLong)
	heal := time.Now()
	f.proxy.Resume()
	up := f.waitStatus(heal, monConn, StateStreaming, "", waitLong)
	flowing := f.dataFlowsAfter()
	if n := f.malformed(); n != 0 {
		t.Fatalf("%d malformed lines: a partial line was published", n)
	}
	for _, m := range f.env.Fetch(subjects.StreamOpenStreamData, f.subject("data", "joints"), int(f.dataCount("joints")), waitLong) {
		if !json.Valid(m.Data()) {
			t.Fatalf("data message is not a whole JSON line: %q", m.Data())
		}
	}
	t.Logf("measured: mid-line stall detected after %s (stall timeout %s), streaming %s after the path healed (gap_ms %.1f), 20 data lines %s after",
		down.At.Sub(stall), max(time.Duration(f.cfg.StallPeriods)*5*time.Millisecond, f.cfg.StallMin), up.At.Sub(heal), up.GapMS, flowing.Sub(heal))
}

// Corrupted bytes from the controller (seeded, 1 in 1000) end as malformed
// lines (or a reconnect), never a crash; once the corruption stops the data
// flows again.
func TestFaultCorruptBytesNeverCrash(t *testing.T) {
	s := startSim(t, nil)
	f := startFaultFixture(t, s, nil)
	f.waitData("joints", 20)
	start := time.Now()
	f.proxy.Corrupt(faultproxy.Downstream, 0.001)
	connectortest.Eventually(t, 2*waitLong, "corruption noticed", func() bool { return f.malformed() >= 3 })
	heal := time.Now()
	f.proxy.Reset()
	f.proxy.Cut(false)
	up := f.waitStatus(heal, monConn, StateStreaming, "", waitLong)
	flowing := f.dataFlowsAfter()
	for _, st := range f.timeline() {
		if st.State == connector.StateReconnecting && st.At.After(start) {
			switch st.Code {
			case connector.ReasonClosedByPeer, reasonStalled, connector.ReasonProtocol, connector.ReasonHandshakeTimeout, reasonPingTimeout:
			default:
				t.Fatalf("unexpected reason under corruption: %+v", st)
			}
		}
	}
	t.Logf("measured: corruption: %d malformed lines in %s; streaming %s after it stopped, 20 data lines %s after",
		f.malformed(), heal.Sub(start), up.At.Sub(heal), flowing.Sub(heal))
}

// The controller's watchdog (session_timeout, here with the keepalive off and
// a 300 ms armed limit) is reported as reason_code watchdog.
func TestFaultWatchdogReasonCode(t *testing.T) {
	s := startSim(t, func(c *sim.Config) { c.ArmedTimeout = 300 * time.Millisecond })
	f := startFaultFixture(t, s, func(c *Config, rc *RobotConfig) {
		rc.ControlAllow = nil
		c.Keepalive = 0
	})
	f.waitData("joints", 5)
	st := f.waitStatus(time.Time{}, monConn, connector.StateReconnecting, reasonWatchdog, waitLong)
	if st.Reason != "session_timeout" {
		t.Fatalf("watchdog reason %q", st.Reason)
	}
	if f.reconnects(reasonWatchdog) < 1 {
		t.Fatal("reconnects{reason=watchdog} not counted")
	}
}

// A controller whose armed watchdog (1 s) is stricter than the keep-alive
// (2 s), and which answers the keep-alive STOP with stop_ack rather than
// nothing_to_stop (as an independent server does): after a session_timeout
// the connection halves its keep-alive and reconnects at once, so data keeps
// flowing after at most two watchdog closes; no keep-alive answer is
// published.
func TestFaultStrictWatchdogAdaptsKeepalive(t *testing.T) {
	s := startSim(t, func(c *sim.Config) {
		c.ArmedTimeout = time.Second
		c.Faults.StopAckIdle = true
	})
	f := startFaultFixture(t, s, func(c *Config, rc *RobotConfig) {
		rc.ControlAllow = nil
		c.Keepalive = 2 * time.Second
	})
	f.waitData("joints", 5)
	time.Sleep(5 * time.Second) // 2 s -> 1 s -> 500 ms: at most two closes
	closes := f.reconnects(reasonWatchdog)
	before, start := f.dataCount("joints"), time.Now()
	time.Sleep(3 * time.Second)
	got, elapsed := f.dataCount("joints")-before, time.Since(start)
	if closes > 2 {
		t.Errorf("%v watchdog closes in the first 5 s, want at most 2 (2 s -> 1 s -> 500 ms)", closes)
	}
	if late := f.reconnects(reasonWatchdog) - closes; late != 0 {
		t.Errorf("%v watchdog closes after the keep-alive adapted", late)
	}
	if want := uint64(elapsed / (5 * time.Millisecond) * 8 / 10); got < want {
		t.Errorf("%d data lines in %v at 5 ms, want >= %d (80 %%)", got, elapsed.Round(time.Millisecond), want)
	}
	if n := len(f.events("stop_ack")); n != 0 {
		t.Errorf("%d keep-alive answers (stop_ack) published", n)
	}
	t.Logf("measured: strict 1 s watchdog, keep-alive 2 s at start: %v watchdog closes, then %d data lines in %v (%.0f %% of 5 ms)",
		closes, got, elapsed.Round(time.Millisecond), float64(got)/float64(elapsed/(5*time.Millisecond))*100)
}
