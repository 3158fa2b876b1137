package openstream

import (
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// natsOutage stops the embedded NATS server; restart brings it back on the
// same port and store (the connector's connections reconnect by themselves).
// Whatever happens, the server is back before the runtime stops at cleanup:
// with NATS gone and the high lane full, shutdown would wait for it.
func natsOutage(f *fixture) (restart func()) {
	t, env := f.t, f.env
	t.Helper()
	_, port, _ := net.SplitHostPort(env.Server.Addr().String())
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	var srv *embednats.Server
	restart = func() {
		if srv != nil {
			return
		}
		var err error
		srv, err = embednats.Start(embednats.Options{Listen: "127.0.0.1:" + port, StoreDir: env.StoreDir})
		if err != nil {
			t.Error(err)
			return
		}
		env.Server = srv
	}
	t.Cleanup(func() {
		if srv != nil {
			srv.Stop()
		}
	})
	t.Cleanup(func() { // runs first
		restart()
		_ = f.stop()
	})
	return restart
}

// readerWaiting reports whether the reader of a monitor connection has been
// waiting in Emit for at least d.
func readerWaiting(r *Robot, monitor string, d time.Duration) bool {
	r.mu.Lock()
	c := r.monitors[monitor]
	r.mu.Unlock()
	s := c.sessionOrNil()
	if s == nil {
		return false
	}
	since := s.emitSince.Load()
	return since != 0 && time.Since(time.Unix(0, since)) >= d
}

// NATS goes away while the controller sends high-lane lines (malformed ones
// here): the high lane fills and the reader waits in Emit. That wait is
// backpressure, not a stalled controller: no stall reconnect, and no line
// that was read is lost (a reconnect used to cancel the pending Emit).
// Not parallel: it stops and restarts the NATS server on its port.
func TestNATSOutageNoStallNoLoss(t *testing.T) {
	s := startSim(t, func(c *sim.Config) { c.Faults.GarbageEvery = 5 * time.Millisecond })
	cfg := testConfig()
	cfg.HighLane = 4
	cfg.StallMin = 100 * time.Millisecond
	f := start(t, s, rc2(s.Addr()), cfg, connectortest.Options{AckTimeout: 200 * time.Millisecond, DrainTimeout: 10 * time.Second})
	f.waitData("joints", 5)
	f.env.WaitCount(subjects.StreamOpenStreamEvent, f.subject("malformed"), 3, waitLong)
	conns := s.Connections()

	restart := natsOutage(f)
	connectortest.Eventually(t, waitLong, "the reader waiting for room in the high lane", func() bool {
		return readerWaiting(f.robot, "joints", 2*cfg.StallMin)
	})
	time.Sleep(3 * cfg.StallMin) // several more stall periods with the reader waiting
	if n := s.Connections(); n != conns {
		t.Fatalf("waiting for NATS was taken for a stall: %d connections, want %d", n, conns)
	}
	restart()
	f.waitData("joints", f.dataCount("joints")+20) // the reader caught up and streams again
	if n := s.Connections(); n != conns {
		t.Errorf("reconnected after the outage: %d connections, want %d", n, conns)
	}
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	read := uint64(f.env.Metric("connector_malformed_total"))
	if got := f.env.WaitCount(subjects.StreamOpenStreamEvent, f.subject("malformed"), read, waitLong); got != read {
		t.Errorf("malformed lines read %d, stored %d: events lost", read, got)
	}
	if n := f.env.Metric("connector_publish_failed_total"); n != 0 {
		t.Errorf("%v events abandoned", n)
	}
}

// A new MONITOR the controller refuses is reverted: removed from memory and
// KV, its connection closed. The revert's KV write must not hold r.mu (every
// status report takes it): with NATS down it waits up to the command timeout.
// Not parallel: it stops and restarts NATS.
func TestRevertMonitorKVOutsideLock(t *testing.T) {
	// The controller refuses every MONITOR, each when the test says so.
	monitorSeen := make(chan struct{}, 1)
	release := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	addr := fakeController(t, func(c net.Conn, _ []byte) bool {
		monitorSeen <- struct{}{}
		select {
		case <-release:
		case <-done:
			return false
		}
		_, _ = c.Write([]byte(`{"error":"monitor_internal_error","message":"refused"}` + "\n"))
		return true
	})
	cfg := testConfig()
	cfg.StallMin = time.Minute
	rc := RobotConfig{Name: robotName, Addr: addr}
	f := start(t, nil, rc, cfg, connectortest.Options{
		AckTimeout: 200 * time.Millisecond, DrainTimeout: 5 * time.Second, CommandTimeout: 3 * time.Second,
	})
	monitorCmd := func(name string) <-chan connectortest.Reply {
		out := make(chan connectortest.Reply, 1)
		go func() {
			var r connectortest.Reply
			if msg, err := f.env.Conn.Request(f.subject("cmd", "monitor"), []byte(`{"name":"`+name+`","url":"/x","period_ms":5}`), 10*time.Second); err == nil {
				_ = json.Unmarshal(msg.Data, &r)
			}
			out <- r
		}()
		return out
	}
	awaitMonitor := func() {
		t.Helper()
		select {
		case <-monitorSeen:
		case <-time.After(waitLong):
			t.Fatal("MONITOR not sent")
		}
	}

	// NATS up: the refusal is the reply, and the monitor is gone everywhere.
	reply := monitorCmd("a")
	awaitMonitor()
	release <- struct{}{}
	if r := <-reply; r.OK || r.Error == nil || r.Error.Code != "monitor_internal_error" {
		t.Fatalf("reply: %+v", r)
	}
	if _, err := f.robot.desiredKV.Get(t.Context(), "monitor.a"); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("refused monitor still in KV: %v", err)
	}
	f.robot.mu.Lock()
	_, desired := f.robot.desired["a"]
	_, conn := f.robot.monitors["a"]
	f.robot.mu.Unlock()
	if desired || conn {
		t.Fatalf("refused monitor still desired (%v) or connected (%v)", desired, conn)
	}

	// NATS down: the revert's KV write waits, r.mu does not.
	monitorCmd("m")
	awaitMonitor()
	restart := natsOutage(f)
	connectortest.Eventually(t, waitLong, "the client noticing the outage", func() bool {
		return f.env.Conn.Status() != nats.CONNECTED
	})
	release <- struct{}{}
	connectortest.Eventually(t, waitLong, "the refused monitor reverted in memory", func() bool {
		reverted := make(chan bool, 1)
		go func() {
			f.robot.mu.Lock()
			_, ok := f.robot.desired["m"]
			f.robot.mu.Unlock()
			reverted <- !ok
		}()
		select {
		case ok := <-reverted:
			return ok
		case <-time.After(500 * time.Millisecond):
			t.Fatal("r.mu held for 500 ms: the revert does KV I/O under the lock")
			return false
		}
	})
	restart()
}
