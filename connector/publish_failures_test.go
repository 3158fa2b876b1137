package connector_test

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// emitExits emits high-lane events from..to-1 in the background (Emit blocks
// while the lane is full) and returns a channel closed when all are accepted.
func emitExits(t *testing.T, h *connector.Host, from, to int, payload func(i int) []byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := from; i < to; i++ {
			if err := h.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellExit(h.Name(), "W"), Lane: connector.LaneHigh,
				Payload: payload(i), MsgID: "x-" + strconv.Itoa(i)}); err != nil {
				t.Errorf("emit %d: %v", i, err)
				return
			}
		}
	}()
	return done
}

func numbered(i int) []byte { return []byte(`{"i":` + strconv.Itoa(i) + `}`) }

// exitsInOrder checks that the session's exit subject holds exactly events 0..n-1, in order.
func exitsInOrder(t *testing.T, env *connectortest.Env, session string, n int) {
	t.Helper()
	msgs := readAll(env.JS, subjects.StreamLaserSellExit, subjects.LaserSellExit(session, "W"), 10*time.Second)
	if len(msgs) != n {
		t.Fatalf("stream holds %d events, want %d", len(msgs), n)
	}
	for i, m := range msgs {
		if !bytes.Equal(m.Data(), numbered(i)) {
			t.Fatalf("event %d is %s", i, m.Data())
		}
	}
}

func exitStream(t *testing.T, env *connectortest.Env) jetstream.Stream {
	t.Helper()
	st, err := env.JS.Stream(context.Background(), subjects.StreamLaserSellExit)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A deleted stream answers every publish with "no responders": the high lane
// keeps retrying (error log, stream_missing counted), fills and blocks the
// producer; nothing is lost, and publishing resumes once the stream is
// provisioned again.
func TestPublishStreamDeletedBlocksUntilProvisioned(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond, DrainTimeout: 20 * time.Second})
	src := newEcho(t, env, "gone", connector.LaneSizes{High: 4})
	stop := env.Run()
	<-emitExits(t, src.host, 0, 1, numbered)
	connectortest.Eventually(t, 5*time.Second, "the first event to be stored", func() bool {
		return streamCount(env.JS, subjects.StreamLaserSellExit, ">") == 1
	})
	if err := env.JS.DeleteStream(context.Background(), subjects.StreamLaserSellExit); err != nil {
		t.Fatal(err)
	}
	done := emitExits(t, src.host, 1, 20, numbered)
	connectortest.Eventually(t, 10*time.Second, "stream_missing to be counted and the lane to fill", func() bool {
		return laneMetric(t, env.Registry, "connector_publish_errors_total", "high", "stream_missing") > 0 &&
			laneMetric(t, env.Registry, "connector_lane_depth", "high", "") == 4
	})
	select {
	case <-done:
		t.Fatal("the producer was not blocked while the stream was missing")
	default:
	}
	// The operator provisions it again (as the connector does at start).
	spec := subjects.LaserSell().Streams[0]
	if spec.Name != subjects.StreamLaserSellExit {
		t.Fatalf("first LaserSell stream is %s", spec.Name)
	}
	if _, err := connector.Provision(context.Background(), env.JS, []subjects.StreamSpec{spec}, connector.DefaultRetention, nil, 1); err != nil {
		t.Fatal(err)
	}
	<-done
	connectortest.Eventually(t, 15*time.Second, "the held events to be stored", func() bool {
		return streamCount(env.JS, subjects.StreamLaserSellExit, ">") == 19
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Event 0 went with the deleted stream; 1..19 are all there, in order, once.
	msgs := readAll(env.JS, subjects.StreamLaserSellExit, ">", 5*time.Second)
	for i, m := range msgs {
		if !bytes.Equal(m.Data(), numbered(i+1)) {
			t.Fatalf("event %d is %s", i+1, m.Data())
		}
	}
	if f := env.Metric("connector_publish_failed_total"); f != 0 {
		t.Fatalf("%v events failed", f)
	}
}

// A full stream with discard-new (max messages) refuses publishes: the high
// lane retries (stream_full counted) and blocks instead of losing; raising
// the limit lets everything through, in order. The low lane does not retry:
// it counts the refused events as dropped and pauses with backoff.
func TestPublishStreamFullRetriesUntilRoom(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond, DrainTimeout: 20 * time.Second})
	src := newEcho(t, env, "full", connector.LaneSizes{High: 4})
	stop := env.Run()
	ctx := context.Background()
	for _, name := range []string{subjects.StreamLaserSellExit, subjects.StreamLaserSellPnL} {
		st, err := env.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.MaxMsgs, cfg.Discard = 3, jetstream.DiscardNew
		if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	done := emitExits(t, src.host, 0, 10, numbered)
	connectortest.Eventually(t, 10*time.Second, "stream_full to be counted and the lane to fill", func() bool {
		return laneMetric(t, env.Registry, "connector_publish_errors_total", "high", "stream_full") > 0 &&
			laneMetric(t, env.Registry, "connector_lane_depth", "high", "") == 4
	})
	if n := streamCount(env.JS, subjects.StreamLaserSellExit, ">"); n != 3 {
		t.Fatalf("full stream holds %d", n)
	}
	for i := 0; i < 6; i++ {
		if err := src.host.Emit(ctx, connector.Event{Subject: subjects.LaserSellPnL("full", "1"), Lane: connector.LaneLow, Payload: numbered(i)}); err != nil {
			t.Fatal(err)
		}
	}
	connectortest.Eventually(t, 10*time.Second, "the refused telemetry to be counted as dropped", func() bool {
		return laneMetric(t, env.Registry, "connector_lane_dropped_total", "", "") == 3
	})
	if r := laneMetric(t, env.Registry, "connector_publish_retries_total", "low", ""); r != 0 {
		t.Fatalf("the low lane retried %v times", r)
	}
	st := exitStream(t, env)
	cfg := st.CachedInfo().Config
	cfg.MaxMsgs = -1
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	exitsInOrder(t, env, "full", 10)
	if f := laneMetric(t, env.Registry, "connector_publish_failed_total", "high", ""); f != 0 {
		t.Fatalf("%v high-lane events failed", f)
	}
}

// An event too large for the server (max_payload) or for the stream
// (max_msg_size) is refused permanently: logged, counted as failed and
// too_large, not retried, and it does not hold up the events behind it;
// consumers see it as a Connector-Seq gap.
func TestPublishTooLargeIsRefusedPermanently(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond})
	src := newEcho(t, env, "big", connector.LaneSizes{})
	stop := env.Run()
	ctx := context.Background()
	st := exitStream(t, env)
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = 4096
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	sizes := []int{10, 2 << 20, 10, 8192, 10} // ok, > max_payload, ok, > max_msg_size, ok
	<-emitExits(t, src.host, 0, len(sizes), func(i int) []byte {
		return append(numbered(i), bytes.Repeat([]byte(" "), sizes[i])...)
	})
	connectortest.Eventually(t, 10*time.Second, "the small events to be stored", func() bool {
		return streamCount(env.JS, subjects.StreamLaserSellExit, ">") == 3
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if f := laneMetric(t, env.Registry, "connector_publish_failed_total", "high", ""); f != 2 {
		t.Fatalf("%v failed, want the 2 oversize events", f)
	}
	if n := laneMetric(t, env.Registry, "connector_publish_errors_total", "high", "too_large"); n != 2 {
		t.Fatalf("too_large counted %v times, want 2 (no retry)", n)
	}
	if r := laneMetric(t, env.Registry, "connector_publish_retries_total", "high", ""); r != 0 {
		t.Fatalf("%v retries of a permanent refusal", r)
	}
	var seqs []string
	for _, m := range readAll(env.JS, subjects.StreamLaserSellExit, ">", 5*time.Second) {
		seqs = append(seqs, m.Headers().Get(subjects.HeaderSeq))
	}
	if got := strconv.Quote(join(seqs)); got != strconv.Quote("1,3,5") {
		t.Fatalf("Connector-Seq of the stored events %s, want 1,3,5 (gaps where events were refused)", got)
	}
}

func join(xs []string) string {
	var b bytes.Buffer
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x)
	}
	return b.String()
}

// The publish metrics: latency observed once per stored event, nothing in
// flight when idle, and the lane depth exactly what is queued.
func TestPublishMetrics(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: 300 * time.Millisecond, DrainTimeout: time.Second})
	src := newEcho(t, env, "met", connector.LaneSizes{High: 8, Low: 16})
	stop := env.Run()
	<-emitExits(t, src.host, 0, 5, numbered)
	for i := 0; i < 7; i++ {
		_ = src.host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellPnL("met", "1"), Lane: connector.LaneLow, Payload: numbered(i)})
	}
	connectortest.Eventually(t, 10*time.Second, "12 events to be stored", func() bool {
		return env.Metric("connector_published_total") == 12
	})
	for _, lane := range []string{"high", "low"} {
		pub := laneMetric(t, env.Registry, "connector_published_total", lane, "")
		if n := laneMetric(t, env.Registry, "connector_publish_latency_seconds", lane, ""); n != pub {
			t.Errorf("%s lane: latency observed %v times for %v stored", lane, n, pub)
		}
	}
	if n := env.Metric("connector_publish_inflight"); n != 0 {
		t.Errorf("%v in flight while idle", n)
	}
	// NATS away: the low lane waits (the pump does not publish into a dead
	// connection), so its depth is exactly what was emitted, up to the bound.
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	// The runtime's own low-lane connection must have noticed: until then the
	// pump may still write into the dead socket (seen under load in CI).
	connectortest.Eventually(t, 5*time.Second, "the runtime's connections to notice", func() bool {
		return !env.LowConn.IsConnected() && !env.HighConn.IsConnected()
	})
	for i := 0; i < 20; i++ {
		_ = src.host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellPnL("met", "1"), Lane: connector.LaneLow, Payload: numbered(i)})
	}
	if d := laneMetric(t, env.Registry, "connector_lane_depth", "low", ""); d != 16 {
		t.Errorf("low-lane depth %v, want 16", d)
	}
	if d := env.Metric("connector_lane_dropped_total"); d != 4 {
		t.Errorf("dropped %v, want 4", d)
	}
	_ = stop()
}
