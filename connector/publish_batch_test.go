package connector_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// emitLow emits n low-lane events numbered from first on host's session,
// each a PnL update of one position.
func emitLow(t *testing.T, host *connector.Host, first, n int) {
	t.Helper()
	for i := first; i < first+n; i++ {
		err := host.Emit(context.Background(), connector.Event{
			Subject: subjects.LaserSellPnL(host.Name(), "1"), Lane: connector.LaneLow, Type: "pnl_update",
			Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`),
		})
		if err != nil {
			t.Fatalf("emit %d: %v", i, err)
		}
	}
}

// lowAccounting waits until every one of sent low-lane events of session is
// accounted for (published, dropped or failed) and returns the three.
func lowAccounting(t *testing.T, env *connectortest.Env, session string, sent float64) (published, dropped, failed float64) {
	t.Helper()
	where := map[string]string{"source": subjects.KindLaserSell, "session": session, "lane": "low"}
	read := func() (float64, float64, float64) {
		return env.MetricWhere("connector_published_total", where),
			env.MetricWhere("connector_lane_dropped_total", map[string]string{"source": subjects.KindLaserSell, "session": session}),
			env.MetricWhere("connector_publish_failed_total", where)
	}
	connectortest.Eventually(t, 10*time.Second, "every low-lane event accounted for", func() bool {
		p, d, f := read()
		return p+d+f >= sent
	})
	published, dropped, failed = read()
	if published+dropped+failed != sent {
		t.Fatalf("published %v + dropped %v + failed %v != sent %v", published, dropped, failed, sent)
	}
	return published, dropped, failed
}

// disallowBatches turns AllowBatchPublish off on the PnL stream, as an
// operator might while the connector runs.
func disallowBatches(t *testing.T, env *connectortest.Env) {
	t.Helper()
	ctx := context.Background()
	st, err := env.JS.Stream(ctx, subjects.StreamLaserSellPnL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.AllowBatchPublish = false
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("turn batch publishing off: %v", err)
	}
}

// storedInOrder reads the session's PnL subject and checks that the stored
// events are increasing by their number (gaps allowed, no reordering or
// duplicate); it returns how many there are.
func storedInOrder(t *testing.T, env *connectortest.Env, session string) int {
	t.Helper()
	subject := subjects.LaserSellPnL(session, "1")
	want := int(env.Count(subjects.StreamLaserSellPnL, subject))
	msgs := env.Fetch(subjects.StreamLaserSellPnL, subject, want, 10*time.Second)
	last, lastSeq := -1, int64(0)
	for _, m := range msgs {
		body := string(m.Data())
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(body, `{"n":`), "}"))
		if err != nil {
			t.Fatalf("stored body %q: %v", body, err)
		}
		seq, err := strconv.ParseInt(m.Headers().Get(subjects.HeaderSeq), 10, 64)
		if err != nil {
			t.Fatalf("%s header of %q: %v", subjects.HeaderSeq, body, err)
		}
		// Every event is built in one reused message (fast batches): its
		// headers must be its own, exactly the two of the low lane.
		if _, err := time.Parse(time.RFC3339Nano, m.Headers().Get(subjects.HeaderReceived)); err != nil || len(m.Headers()) != 2 {
			t.Fatalf("headers of %q: %v (%v)", body, m.Headers(), err)
		}
		if n <= last || seq <= lastSeq {
			t.Fatalf("stored out of order: event %d (Connector-Seq %d) after %d (%d)", n, seq, last, lastSeq)
		}
		last, lastSeq = n, seq
	}
	return len(msgs)
}

// TestFastBatchStoresEveryLowLaneEvent: with a server and streams that allow
// fast batches (the embedded nats-server), the low lane publishes in them;
// every event is stored once, in order, and the metrics settle exactly,
// also for the last events of a burst (committed once the lane is idle).
func TestFastBatchStoresEveryLowLaneEvent(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	if mode, why := env.Runtime.LowLanePublishing(); mode != connector.LowLaneFastBatch {
		t.Fatalf("low-lane publishing %q (%s), want %q", mode, why, connector.LowLaneFastBatch)
	}
	st, err := env.JS.Stream(context.Background(), subjects.StreamLaserSellPnL)
	if err != nil {
		t.Fatal(err)
	}
	if !st.CachedInfo().Config.AllowBatchPublish {
		t.Fatal("provisioning did not allow batch publishing on the low-lane stream")
	}
	stop := env.Run()
	defer stop()
	host := env.Host(subjects.KindLaserSell, "fast", connector.LaneSizes{Low: 20000})
	const n = 5000
	emitLow(t, host, 0, n/2)
	time.Sleep(3 * 100 * time.Millisecond) // a pause: the first batch is committed idle
	emitLow(t, host, n/2, n/2)
	published, dropped, failed := lowAccounting(t, env, "fast", n)
	if published != n || dropped != 0 || failed != 0 {
		t.Fatalf("published %v, dropped %v, failed %v; want all %d published", published, dropped, failed, n)
	}
	if stored := storedInOrder(t, env, "fast"); stored != n {
		t.Fatalf("stored %d, want %d", stored, n)
	}
	if inflight := env.MetricWhere("connector_publish_inflight", map[string]string{"lane": "low"}); inflight != 0 {
		t.Fatalf("low-lane in-flight gauge %v after every batch settled", inflight)
	}
}

// TestFastBatchFallsBackWhenTheStreamRefuses: an operator turns
// AllowBatchPublish off while the connector runs. The batch in progress
// fails (at the latest after the ack timeout: the refusal can come while
// the publisher waits for a flow ack), its unacknowledged events count as
// dropped, and the low lane publishes one message at a time from then on,
// visibly.
func TestFastBatchFallsBackWhenTheStreamRefuses(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: time.Second})
	stop := env.Run()
	defer stop()
	host := env.Host(subjects.KindLaserSell, "fallback", connector.LaneSizes{Low: 20000})
	emitLow(t, host, 0, 1000)
	lowAccounting(t, env, "fallback", 1000)

	disallowBatches(t, env)
	emitLow(t, host, 1000, 1000)
	connectortest.Eventually(t, 10*time.Second, "fallback to per-message publishing", func() bool {
		mode, _ := env.Runtime.LowLanePublishing()
		return mode == connector.LowLanePerMessage
	})
	if _, why := env.Runtime.LowLanePublishing(); !strings.Contains(why, "AllowBatchPublish") {
		t.Fatalf("fallback reason %q does not say what changed", why)
	}
	emitLow(t, host, 2000, 1000)
	published, dropped, failed := lowAccounting(t, env, "fallback", 3000)
	stored := storedInOrder(t, env, "fallback")
	if float64(stored) != published || failed != 0 {
		t.Fatalf("stored %d, published %v, dropped %v, failed %v", stored, published, dropped, failed)
	}
	// At most the second thousand, sent into the batch in progress, is lost.
	if published < 2000 || dropped > 1000 {
		t.Fatalf("published %v, dropped %v of 3000: the fallback lost more than the batch in progress", published, dropped)
	}
	t.Logf("published %v, dropped %v (the batch in progress when batching was turned off)", published, dropped)
}

// TestFastBatchRefusedAtTheStartResendsTheEvent: batches are turned off
// between two batches; the next batch's first event is refused, so nothing
// of it was stored: that event is published one at a time instead, and
// nothing is lost.
func TestFastBatchRefusedAtTheStartResendsTheEvent(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	stop := env.Run()
	defer stop()
	host := env.Host(subjects.KindLaserSell, "restart", connector.LaneSizes{Low: 4096})
	emitLow(t, host, 0, 10) // fewer than a flow window: only the idle commit settles them
	lowAccounting(t, env, "restart", 10)
	disallowBatches(t, env)
	emitLow(t, host, 10, 10)
	published, dropped, failed := lowAccounting(t, env, "restart", 20)
	if published != 20 || dropped != 0 || failed != 0 {
		t.Fatalf("published %v, dropped %v, failed %v of 20: a refused batch start stored nothing, so its event must be resent", published, dropped, failed)
	}
	if mode, _ := env.Runtime.LowLanePublishing(); mode != connector.LowLanePerMessage {
		t.Fatalf("low-lane publishing %q after the refusal", mode)
	}
	if stored := storedInOrder(t, env, "restart"); stored != 20 {
		t.Fatalf("stored %d of 20", stored)
	}
}

// TestPerMessageWhenConfigured: LowLanePerMessage keeps the measured
// per-message path even where batches are allowed.
func TestPerMessageWhenConfigured(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{LowLanePerMessage: true})
	mode, why := env.Runtime.LowLanePublishing()
	if mode != connector.LowLanePerMessage || why == "" {
		t.Fatalf("low-lane publishing %q (%q), want %q with a reason", mode, why, connector.LowLanePerMessage)
	}
	stop := env.Run()
	defer stop()
	host := env.Host(subjects.KindLaserSell, "permsg", connector.LaneSizes{Low: 4096})
	emitLow(t, host, 0, 2000)
	if published, _, _ := lowAccounting(t, env, "permsg", 2000); published != 2000 {
		t.Fatalf("published %v of 2000", published)
	}
}

// TestOlderServerPublishesPerMessage runs the runtime against a real
// nats-server older than 2.14 (no fast batches): provisioning still works,
// the low lane publishes one message at a time and says why. The server
// binary comes from CONNECTOR_TEST_OLD_NATS_SERVER (.ci/run installs
// nats-server v2.12.4 with go install and sets it to the binary's path; a
// wrong path fails the test).
func TestOlderServerPublishesPerMessage(t *testing.T) {
	bin := os.Getenv("CONNECTOR_TEST_OLD_NATS_SERVER")
	if bin == "" {
		t.Skip("CONNECTOR_TEST_OLD_NATS_SERVER is not set (.ci/run sets it)")
	}
	port := freePort(t)
	cmd := exec.Command(bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", t.TempDir())
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	var nc *nats.Conn
	connectortest.Eventually(t, 10*time.Second, "the older nats-server accepts connections", func() bool {
		c, err := nats.Connect(url)
		if err != nil {
			return false
		}
		nc = c
		return true
	})
	defer nc.Close()
	if v := nc.ConnectedServerVersion(); !strings.HasPrefix(v, "2.12.") {
		t.Fatalf("server version %s, want 2.12.x", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := prometheus.NewRegistry()
	rt, err := connector.New(ctx, connector.Options{
		HighConn: nc, Kinds: []subjects.Kind{subjects.LaserSell()},
		Metrics: connector.NewMetrics(reg), Log: connectortest.Logger(t),
	})
	if err != nil {
		t.Fatalf("runtime on nats-server %s: %v", nc.ConnectedServerVersion(), err)
	}
	mode, why := rt.LowLanePublishing()
	if mode != connector.LowLanePerMessage || !strings.Contains(why, "2.14") {
		t.Fatalf("low-lane publishing %q (%q), want %q naming the server version needed", mode, why, connector.LowLanePerMessage)
	}
	var host *connector.Host
	runCtx, stopRun := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- rt.Run(runCtx, connector.Session{Kind: subjects.KindLaserSell, Name: "old", Lanes: connector.LaneSizes{Low: 4096},
			Open: func(h *connector.Host) (connector.Source, error) { host = h; return idleSource{}, nil }})
	}()
	<-rt.Serving()
	emitLow(t, host, 0, 1000)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	connectortest.Eventually(t, 10*time.Second, "1000 events stored on the older server", func() bool {
		st, err := js.Stream(ctx, subjects.StreamLaserSellPnL)
		return err == nil && st.CachedInfo().State.Msgs == 1000
	})
	stopRun()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

// freePort returns a loopback TCP port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testWriter sends a child process's output to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
