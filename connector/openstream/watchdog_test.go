package openstream

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

// A strict controller (armed watchdog 300 ms, commands required) keeps the
// session as long as the keepalive runs: no reconnect, data all along. Both
// keepalive modes work; their expected answers are consumed, not published.
func TestStrictWatchdogKeepalive(t *testing.T) {
	t.Parallel()
	const watchdog = 300 * time.Millisecond
	for _, mode := range []string{KeepaliveStop, KeepaliveMonitor} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, func(c *sim.Config) {
				c.ArmedTimeout = watchdog
				c.IdleTimeout = watchdog
				c.Watchdog = sim.WatchdogStrict
			})
			cfg := testConfig()
			cfg.Keepalive = 100 * time.Millisecond
			cfg.KeepaliveMode = mode
			cfg.IdleKeepalive = 100 * time.Millisecond
			f := start(t, s, robotConfig(s.Addr()), cfg, connectortest.Options{})
			f.waitData("joints", 2)
			// Both sessions outlive two watchdog periods: the controller acted on
			// a command of each that long after its HANDSHAKE.
			waitSim(t, s, "both sessions kept past two watchdog periods", func() bool {
				opened := map[uint64]time.Time{}
				kept := map[uint64]bool{}
				for _, c := range s.Received() {
					if c.Cmd == "HANDSHAKE" {
						opened[c.Conn] = c.At
					} else if at, ok := opened[c.Conn]; ok && c.At.Sub(at) > 2*watchdog {
						kept[c.Conn] = true
					}
				}
				return len(kept) == 2
			})
			if s.Connections() != 2 {
				t.Fatalf("the controller's watchdog closed sessions: %d connections, want 2", s.Connections())
			}
			for _, c := range s.Received() {
				if c.Err == sim.ErrSessionTimeout {
					t.Fatalf("session_timeout: %+v", c)
				}
			}
			keepalives := len(received(s, "STOP"))
			if mode == KeepaliveMonitor {
				keepalives += len(received(s, "MONITOR")) - 1
			}
			if keepalives < 4 {
				t.Errorf("keepalives: %d, want >= 4", keepalives)
			}
			if n := len(f.events("error")); n != 0 {
				t.Errorf("error events: %d, want 0", n)
			}
			if n := f.eventCount("monitor_ack", 1); n != 1 {
				t.Errorf("monitor_ack events: %d, want 1", n)
			}
		})
	}
}

// Without keepalive the strict watchdog fires every 300 ms: each time the
// connector reconnects at once, re-HANDSHAKEs, restores the MONITOR, and
// reports the gap.
func TestWatchdogReconnectRestoresMonitor(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) {
		c.ArmedTimeout = 300 * time.Millisecond
		c.Watchdog = sim.WatchdogStrict
	})
	cfg := testConfig()
	cfg.Keepalive = 0
	rc := robotConfig(s.Addr())
	rc.ControlAllow = nil
	f := start(t, s, rc, cfg, connectortest.Options{})
	f.waitData("joints", 2)
	waitSim(t, s, "three watchdog reconnects", func() bool { return s.Connections() >= 4 })
	waitSim(t, s, "monitor restored", func() bool { return monitorsActive(s) == 1 })
	f.waitData("joints", f.dataCount("joints")+20) // data keeps coming

	var gaps []float64
	connectortest.Eventually(t, waitLong, "streaming statuses with gap", func() bool {
		gaps = gaps[:0]
		for _, st := range f.statuses() {
			if isConn(st, StateStreaming, "monitor/joints") {
				if g, ok := detail(st)["gap_ms"].(float64); ok {
					gaps = append(gaps, g)
				}
			}
		}
		return len(gaps) >= 3
	})
	reasons := map[string]bool{}
	for _, st := range f.statuses() {
		if isConn(st, "reconnecting", "monitor/joints") {
			reasons[st["reason"].(string)] = true
			if st["backoff_ms"] != nil {
				t.Errorf("a reconnect after a healthy session must be immediate: %v", st)
			}
		}
	}
	if !reasons["session_timeout"] {
		t.Errorf("reconnect reasons: %v, want session_timeout", reasons)
	}
	for _, g := range gaps {
		// The data stops when the controller times the session out; the
		// reconnect itself is a few ms on loopback.
		if g <= 0 || g > 250 {
			t.Errorf("gap %.1f ms out of range", g)
		}
	}
	t.Logf("reconnect gaps (ms): %v", gaps)
	// Every session got HANDSHAKE then MONITOR again.
	hs, mon := len(received(s, "HANDSHAKE")), len(received(s, "MONITOR"))
	if hs < 4 || mon < hs-1 {
		t.Errorf("HANDSHAKE %d, MONITOR %d", hs, mon)
	}
}

// EOF (dropped connections) and a stalled stream are detected quickly.
func TestDropAndStallReconnect(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) {
		c.ArmedTimeout = -1 // only our stall detection can notice
		c.Faults.StallEvery = 400 * time.Millisecond
		c.Faults.StallFor = time.Second
	})
	cfg := testConfig()
	cfg.StallMin = 150 * time.Millisecond
	rc := robotConfig(s.Addr())
	rc.ControlAllow = nil
	f := start(t, s, rc, cfg, connectortest.Options{})
	f.waitData("joints", 2)
	st := f.waitStatus("stalled", func(st map[string]any) bool {
		r, _ := st["reason"].(string)
		return isConn(st, "reconnecting", "monitor/joints") && strings.HasPrefix(r, "stalled")
	})
	t.Logf("stall status: %v", st)
	n := f.dataCount("joints")
	f.waitData("joints", n+5) // the new session streams (each MONITOR restarts the stall cycle)

	before := s.Connections()
	s.DropConnections()
	f.waitStatus("eof", func(st map[string]any) bool {
		return isConn(st, "reconnecting", "monitor/joints") && st["reason"] == "eof"
	})
	waitSim(t, s, "reconnected after drop", func() bool { return s.Connections() > before && monitorsActive(s) == 1 })
}

// Oversized lines and garbage become malformed events (raw bytes kept) and the
// reader resynchronizes at the next line.
func TestMalformedLines(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.Faults.GarbageEvery = 10 * time.Millisecond })
	cfg := testConfig()
	rc := robotConfig(s.Addr())
	rc.ControlAllow = nil
	f := start(t, s, rc, cfg, connectortest.Options{})
	f.waitData("joints", 5)
	malformed := f.subject("malformed")
	f.env.WaitCount(subjects.StreamOpenStreamEvent, malformed, 10, waitLong)
	seen := map[string]bool{}
	for _, m := range f.env.Fetch(subjects.StreamOpenStreamEvent, malformed, 10, time.Second) {
		seen[string(m.Data())] = true
	}
	for _, want := range []string{"this is not json", `{"type":"data","ts":`, "[1,2,3]", "\xff\xfe\x00 binary garbage", `{"type":"data" "ts":1}`} {
		if !seen[want] {
			t.Errorf("malformed line %q not published verbatim; got %v", want, seen)
		}
	}
	if f.eventCount("unknown", 1) == 0 {
		t.Errorf("an object with neither type nor error must be published as event.unknown")
	}
	if got := testMetric(t, f, "connector_malformed_total"); got < 10 {
		t.Errorf("malformed metric: %v", got)
	}

	// Lines over MaxLine: every data line here is ~200 bytes.
	s2 := startSim(t, nil)
	cfg.MaxLine = 120
	// No line counts as data here, so the stall watchdog would reconnect
	// (and re-handshake) on a loaded machine: keep it out of this check.
	cfg.StallMin = time.Minute
	rc2 := robotConfig(s2.Addr())
	rc2.ControlAllow = nil
	f2 := start(t, s2, rc2, cfg, connectortest.Options{})
	f2.env.WaitCount(subjects.StreamOpenStreamEvent, f2.subject("malformed"), 5, waitLong)
	m := f2.env.Fetch(subjects.StreamOpenStreamEvent, f2.subject("malformed"), 1, time.Second)[0]
	if !bytes.HasPrefix(m.Data(), []byte(`{"type":"data"`)) {
		t.Errorf("oversized line prefix: %q", m.Data())
	}
	// Short lines around the long ones still parse.
	if len(f2.events("monitor_ack")) != 1 || len(f2.events("handshake_ack")) != 1 {
		t.Errorf("acks lost around oversized lines")
	}
	if f2.dataCount("joints") != 0 {
		t.Errorf("oversized data published as data")
	}
}

func testMetric(t *testing.T, f *fixture, name string) float64 {
	t.Helper()
	mfs, err := f.env.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// A controller that closes in the middle of a line: the partial line is kept
// as malformed, and the connector reconnects and restores the MONITOR.
func TestServerClosesMidLine(t *testing.T) {
	t.Parallel()
	monitors := make(chan string, 10)
	addr := fakeController(t, func(c net.Conn, line []byte) bool {
		monitors <- string(line)
		_, _ = c.Write([]byte(`{"type":"monitor_ack"}` + "\n" + `{"type":"data","ts":1,"result":{}}` + "\n" + `{"type":"data","ts":2,"res`))
		return false // close mid-line
	})
	cfg := testConfig()
	rc := RobotConfig{Name: robotName, Addr: addr, Monitors: map[string]Recipe{"m": {URL: "/x", Method: "GET", PeriodMS: 5}}}
	f := start(t, nil, rc, cfg, connectortest.Options{})
	for range 2 {
		select {
		case m := <-monitors:
			if m != `{"cmd":"MONITOR","payload":{"url":"/x","method":"GET","period_ms":5}}` {
				t.Errorf("MONITOR line: %s", m)
			}
		case <-time.After(waitLong):
			t.Fatal("MONITOR not restored after the close")
		}
	}
	f.env.WaitCount(subjects.StreamOpenStreamEvent, f.subject("malformed"), 1, waitLong)
	m := f.env.Fetch(subjects.StreamOpenStreamEvent, f.subject("malformed"), 1, time.Second)
	if len(m) != 1 || string(m[0].Data()) != `{"type":"data","ts":2,"res` {
		t.Fatalf("partial line: %v", m)
	}
	f.waitData("m", 2)
}

// version_mismatch and handshake_rejected: status with the reason and a slow
// retry, not a hot loop.
func TestHandshakeRefusedRetriesSlowly(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.Version = "2.0.0" })
	cfg := testConfig()
	rc := robotConfig(s.Addr())
	rc.ControlAllow = nil
	f := start(t, s, rc, cfg, connectortest.Options{})
	st := f.waitStatus("version_mismatch", func(st map[string]any) bool {
		r, _ := st["reason"].(string)
		return isConn(st, "reconnecting", "monitor/joints") && strings.HasPrefix(r, "version_mismatch")
	})
	if st["backoff_ms"] != 300.0 {
		t.Errorf("first refusal backoff: %v, want 300", st["backoff_ms"])
	}
	time.Sleep(700 * time.Millisecond)
	if n := s.Connections(); n > 3 {
		t.Errorf("%d connections in ~0.7 s: a hot loop", n)
	}
	// A handshake_ack never came, so the monitor command times out, but it
	// stays desired for when the controller accepts us.
	s2 := startSim(t, func(c *sim.Config) { c.Faults.RejectHandshake = true })
	cfg.AckTimeout = 300 * time.Millisecond
	f2 := start(t, s2, rc2(s2.Addr()), cfg, connectortest.Options{})
	f2.waitStatus("handshake_rejected", func(st map[string]any) bool {
		r, _ := st["reason"].(string)
		return isConn(st, "reconnecting", "monitor/joints") && strings.HasPrefix(r, "handshake_rejected")
	})
	f2.mustRefuse("monitor", `{"name":"p","url":"/project/robot/po_cur","period_ms":5}`, "timeout")
	if _, err := f2.robot.desiredKV.Get(t.Context(), "monitor.p"); err != nil {
		t.Errorf("timed-out monitor not kept as desired: %v", err)
	}
}

func rc2(addr string) RobotConfig {
	rc := robotConfig(addr)
	rc.ControlAllow = nil
	return rc
}

// A controller that accepts fewer connections than the robot needs: the
// refused connection says so on status while the others stream.
func TestConnectionLimitVisible(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.MaxConns = 1 })
	cfg := testConfig()
	rc := robotConfig(s.Addr())
	f := start(t, s, rc, cfg, connectortest.Options{})
	st := f.waitStatus("refused connection", func(st map[string]any) bool {
		r, _ := st["reason"].(string)
		return st["state"] == "reconnecting" && strings.Contains(r, "handshake_rejected")
	})
	t.Logf("refusal status: %v", st)
}
