package connector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// A dead NATS must not lose high-lane events: unacknowledged publishes are
// retried until the server is back.
func TestHighLaneSurvivesNATSOutage(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond, DrainTimeout: 20 * time.Second})
	src := newEcho(t, env, "out", connector.LaneSizes{High: 16})
	stop := env.Run()
	ctx := context.Background()
	emit := func(i int) {
		if err := src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("out", "W"), Lane: connector.LaneHigh,
			Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`), MsgID: fmt.Sprintf("e-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	emit(0)
	if n := env.WaitCount(subjects.StreamLaserSellExit, ">", 1, 3*time.Second); n != 1 {
		t.Fatalf("first event not stored: %d", n)
	}
	_, port, _ := net.SplitHostPort(env.Server.Addr().String())
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	for i := 1; i <= 10; i++ {
		emit(i)
	}
	time.Sleep(500 * time.Millisecond) // let at least one ack time out
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:" + port, StoreDir: env.StoreDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	env.Server = srv
	if n := env.WaitCount(subjects.StreamLaserSellExit, ">", 11, 15*time.Second); n != 11 {
		t.Fatalf("after the outage the stream holds %d of 11 events", n)
	}
	// The high lane keeps the receive order across the outage.
	for i, m := range env.Fetch(subjects.StreamLaserSellExit, ">", 11, 2*time.Second) {
		if string(m.Data()) != `{"i":`+strconv.Itoa(i)+`}` {
			t.Fatalf("event %d stored out of order: %s", i, m.Data())
		}
	}
	if r := env.Metric("connector_publish_retries_total"); r == 0 {
		t.Fatal("no retry was counted during the outage")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if f := env.Metric("connector_publish_failed_total"); f != 0 {
		t.Fatalf("%v events were abandoned", f)
	}
}

// stubbornSource emits a final status with a context that never ends, as a
// source that must not drop its last status does.
type stubbornSource struct{ *echoSource }

func (s stubbornSource) Run(ctx context.Context) error {
	<-ctx.Done()
	return s.host.SetStatus(context.Background(), connector.Status{State: connector.StateStopped})
}

// With NATS down and the high lane full, shutdown still ends: after
// DrainTimeout the lanes close and the blocked source returns.
func TestShutdownEndsWithNATSDownAndFullLane(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 100 * time.Millisecond, DrainTimeout: 300 * time.Millisecond})
	src := startEcho(t, env, "stuck", connector.LaneSizes{High: 2}, func(e *echoSource) connector.Source { return stubbornSource{e} })
	stop := env.Run()
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	for i := 0; i < 4; i++ { // one in the publisher's retry, the rest fill the lane
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_ = src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellExit("stuck", "W"), Lane: connector.LaneHigh, Payload: []byte(`{}`)})
		cancel()
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- stop() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown hung with NATS down")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
	events, published, failed := env.Metric("connector_events_total"), env.Metric("connector_published_total"), env.Metric("connector_publish_failed_total")
	if failed == 0 || events != published+failed {
		t.Fatalf("events %v = published %v + failed %v does not hold: something left unaccounted", events, published, failed)
	}
	// After shutdown nothing is accepted silently, in either lane.
	for _, lane := range []connector.Lane{connector.LaneHigh, connector.LaneLow} {
		if err := src.host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellPnL("stuck", "1"), Lane: lane, Payload: []byte(`{}`)}); err == nil {
			t.Errorf("%s-lane Emit after shutdown reported success", lane)
		}
	}
}

func TestEmitRefusesSubjectsOfOtherSessions(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	src := newEcho(t, env, "mine", connector.LaneSizes{})
	if err := src.host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellExit("theirs", "W"), Payload: []byte(`{}`)}); err == nil {
		t.Fatal("a session emitted on another session's subject")
	}
}

// Telemetry emitted while NATS is down, within the lane's capacity, waits in
// the lane and is stored once NATS is back, in order and once: the low lane
// does not publish into a dead connection, and never retries (a retry would
// reorder or, without a Nats-Msg-Id, duplicate). What was in flight when the
// connection died may be lost: each such event is counted as dropped.
func TestLowLaneSurvivesShortNATSOutage(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond, DrainTimeout: 20 * time.Second})
	src := newEcho(t, env, "tele", connector.LaneSizes{Low: 64})
	stop := env.Run()
	_, port, _ := net.SplitHostPort(env.Server.Addr().String())
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	// "Down" as the publisher sees it: its connection has noticed.
	connectortest.Eventually(t, 5*time.Second, "the low-lane connection to notice the outage", func() bool {
		return !env.LowConn.IsConnected()
	})
	for i := 0; i < 40; i++ {
		if err := src.host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellPnL("tele", "1"), Lane: connector.LaneLow,
			Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(400 * time.Millisecond) // keep the server away longer than the ack timeout
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:" + port, StoreDir: env.StoreDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	env.Server = srv
	if err := stop(); err != nil { // drains the lane
		t.Fatal(err)
	}
	dropped := env.Metric("connector_lane_dropped_total")
	msgs := readAll(env.JS, subjects.StreamLaserSellPnL, "lasersell.tele.pnl.1", 15*time.Second)
	if float64(len(msgs)) < 40-dropped || len(msgs) > 40 {
		t.Fatalf("%d of 40 stored with %v lost in flight", len(msgs), dropped)
	}
	// The connection knew NATS was down before the first Emit: every event
	// waited in the lane instead of being published into the dead connection.
	if dropped != 0 {
		t.Fatalf("%v of 40 events lost: the lane published into the dead connection instead of waiting", dropped)
	}
	if f := env.Metric("connector_publish_failed_total"); f != 0 {
		t.Fatalf("%v events abandoned", f)
	}
	prev := -1
	for _, m := range msgs {
		var p struct{ I int }
		_ = json.Unmarshal(m.Data(), &p)
		if p.I <= prev {
			t.Fatalf("telemetry reordered or duplicated: %d after %d", p.I, prev)
		}
		prev = p.I
	}
}
