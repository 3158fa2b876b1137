package lasersell

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// natsOutage stops the rig's NATS server and returns a function that starts
// it again on the same port and store (the runtime's connections reconnect).
func natsOutage(t *testing.T, r *rig) (restart func()) {
	t.Helper()
	_, port, err := net.SplitHostPort(r.env.Server.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r.env.Server.Shutdown()
	r.env.Server.WaitForShutdown()
	return func() {
		t.Helper()
		srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:" + port, StoreDir: r.env.StoreDir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Stop)
		// Cleanups run last-in first-out: the runtime drains before this
		// server stops.
		t.Cleanup(func() { _ = r.stop() })
		r.env.Server = srv
	}
}

// statusDocs decodes every status message stored so far.
func (r *rig) statusDocs() []map[string]any {
	r.t.Helper()
	var out []map[string]any
	for _, m := range r.statuses() {
		var st map[string]any
		if err := json.Unmarshal(m.Data(), &st); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, st)
	}
	return out
}

// A high lane that stays full for longer than the read timeout (NATS down)
// is backpressure, not a dead upstream: the reader resumes where it stopped,
// the session is never torn down, nothing is lost.
func TestBackpressureIsNotADeadPeer(t *testing.T) {
	s := startSim(t, sim.Config{})
	cfg := testConfig(s.URL())
	cfg.HighLane = 2
	cfg.PingInterval = 200 * time.Millisecond
	cfg.ReadTimeout = 250 * time.Millisecond
	r := runWith(t, cfg, connectortest.Options{AckTimeout: 100 * time.Millisecond})
	r.waitConnected()
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.hello_ok._", 1)

	restart := natsOutage(t, r)
	// Spaced out, so that the frame the reader ends up waiting with is the
	// last one it has buffered: its next read needs the network.
	const n = 6
	for i := range n {
		s.SendRaw(fmt.Appendf(nil, `{"type":"marker","i":%d}`, i))
		time.Sleep(30 * time.Millisecond)
	}
	// The reader now waits on the full lane, far longer than the read timeout.
	time.Sleep(4 * cfg.ReadTimeout)
	restart()

	if got := r.env.WaitCount(subjects.StreamLaserSellEvents, "lasersell.t1.event.marker._", n, wait); got != n {
		t.Fatalf("%d of %d frames stored after the outage", got, n)
	}
	// The reader is reading again (the pong of a ping round-trips) on the
	// same connection, which never ended.
	r.mustOK(typePing, `{}`)
	if c := s.Connections(); c != 1 {
		t.Fatalf("%d upstream connections: the backpressure was taken for a dead peer", c)
	}
	for _, st := range r.statusDocs() {
		if st["state"] != "connecting" && st["state"] != "connected" {
			t.Fatalf("status %v during backpressure", st)
		}
	}
}

// The final "stopped" status is not dropped when the high lane is full at
// shutdown (NATS down for longer than any short timeout): it is stored once
// the lane moves again.
func TestStoppedStatusSurvivesFullLaneAtShutdown(t *testing.T) {
	s := startSim(t, sim.Config{})
	cfg := testConfig(s.URL())
	cfg.HighLane = 1
	r := runWith(t, cfg, connectortest.Options{AckTimeout: 100 * time.Millisecond})
	r.waitConnected()
	r.fetch(subjects.StreamLaserSellEvents, "lasersell.t1.event.hello_ok._", 1)

	accepted := r.env.Metric("connector_events_total")
	restart := natsOutage(t, r)
	for i := range 4 {
		s.SendRaw(fmt.Appendf(nil, `{"type":"marker","i":%d}`, i))
	}
	// The publisher is stuck on one event, the lane (capacity 1) fills up
	// behind it and the reader waits.
	connectortest.Eventually(t, wait, "markers reaching the lane", func() bool {
		return r.env.Metric("connector_events_total") > accepted
	})
	time.Sleep(100 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	time.Sleep(1500 * time.Millisecond) // longer than the old 1 s give-up
	restart()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * wait):
		t.Fatal("the runtime did not stop once NATS was back")
	}
	docs := r.statusDocs()
	if len(docs) == 0 || docs[len(docs)-1]["state"] != "stopped" {
		t.Fatalf("statuses %v: the last must be stopped", docs)
	}
}

// The reconnect delays the source actually uses, as its status events report
// them, follow the default schedule: 100, 200, 400, 800, 1600 ms, then 2 s.
func TestReconnectBackoffInStatusEvents(t *testing.T) {
	s := startSim(t, sim.Config{})
	s.SetRefuseStatus(http.StatusServiceUnavailable)
	cfg := testConfig(s.URL())
	def := DefaultConfig()
	cfg.BackoffBase, cfg.BackoffMax = def.BackoffBase, def.BackoffMax
	r := run(t, cfg, "")

	want := []float64{100, 200, 400, 800, 1600, 2000, 2000}
	reconnecting := func() (out []map[string]any) {
		for _, st := range r.statusDocs() {
			if st["state"] == "reconnecting" {
				out = append(out, st)
			}
		}
		return out
	}
	connectortest.Eventually(t, 15*time.Second, "seven reconnecting statuses", func() bool {
		return len(reconnecting()) >= len(want)
	})
	docs := r.statusDocs()
	at := func(st map[string]any) time.Time {
		ts, err := time.Parse(time.RFC3339Nano, st["time"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	n := 0
	for i, st := range docs {
		if st["state"] != "reconnecting" || n == len(want) {
			continue
		}
		if st["backoff_ms"] != want[n] || st["attempt"] != float64(n+1) {
			t.Fatalf("reconnecting status %d: %v, want backoff_ms %v attempt %d", n+1, st, want[n], n+1)
		}
		// The delay is really waited: the next attempt starts after it.
		if i+1 < len(docs) {
			next := docs[i+1]
			if next["state"] != "connecting" {
				t.Fatalf("after %v comes %v, want connecting", st, next)
			}
			if gap := at(next).Sub(at(st)); gap < time.Duration(want[n])*time.Millisecond || gap > time.Duration(want[n])*time.Millisecond+time.Second {
				t.Fatalf("attempt %d started %s after the reconnecting status announcing %v ms", n+2, gap, want[n])
			}
		}
		n++
	}
}
