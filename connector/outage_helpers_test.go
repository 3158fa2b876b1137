package connector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// laneMetric sums the series of a metric whose label lane (and reason, when
// given) match, so one lane's figures can be told from the other's.
func laneMetric(t testing.TB, reg *prometheus.Registry, name, lane, reason string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if (l.GetName() == "lane" && lane != "" && l.GetValue() != lane) ||
					(l.GetName() == "reason" && reason != "" && l.GetValue() != reason) {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// readAll reads every message of stream on filter, tolerating a JetStream
// that is still starting (it then returns nil, for polling callers).
func readAll(js jetstream.JetStream, stream, filter string, timeout time.Duration) []jetstream.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil
	}
	var want uint64
	for _, n := range info.State.Subjects {
		want += n
	}
	if want == 0 {
		return nil
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return nil
	}
	out := make([]jetstream.Msg, 0, want)
	for uint64(len(out)) < want && ctx.Err() == nil {
		batch, err := cons.Fetch(int(min(want-uint64(len(out)), 10000)), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil
		}
		for m := range batch.Messages() {
			out = append(out, m)
		}
	}
	return out
}

// streamCount is how many messages stream holds on filter (0 while JetStream
// does not answer).
func streamCount(js jetstream.JetStream, stream, filter string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// flood emits both lanes of one session at a steady rate: high-lane events
// numbered in upstream order (payload {"n":N}, Nats-Msg-Id h-N), and low-lane
// telemetry. Emit on the high lane blocks while the lane is full; the flood
// then stops producing, as an upstream reader would.
type flood struct {
	host     *connector.Host
	session  string
	high     atomic.Int64 // high-lane events Emit accepted (1..high)
	low      atomic.Int64 // low-lane events Emit accepted
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	emitErrs atomic.Int64
}

// Flood rates: enough to fill the small lanes within milliseconds of an
// outage, low enough for -race on two shared cores.
const (
	floodTick     = 2 * time.Millisecond
	floodHighTick = 4  // high-lane events per tick (about 2000/s)
	floodLowTick  = 20 // low-lane events per tick (about 10000/s)
)

func startFlood(host *connector.Host) *flood {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flood{host: host, session: host.Name(), cancel: cancel}
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(floodTick)
		defer tick.Stop()
		for n := int64(1); ; {
			for range floodHighTick {
				err := host.Emit(ctx, connector.Event{
					Subject: subjects.LaserSellExit(f.session, "W"), Lane: connector.LaneHigh, Type: "exit_signal_with_tx",
					Payload: []byte(`{"n":` + strconv.FormatInt(n, 10) + `}`), MsgID: "h-" + strconv.FormatInt(n, 10),
				})
				if err != nil {
					if ctx.Err() == nil {
						f.emitErrs.Add(1)
					}
					return
				}
				f.high.Store(n)
				n++
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(floodTick)
		defer tick.Stop()
		for n := int64(1); ; {
			for range floodLowTick {
				if err := host.Emit(ctx, connector.Event{
					Subject: subjects.LaserSellPnL(f.session, "1"), Lane: connector.LaneLow, Type: "pnl_update",
					Payload: []byte(`{"n":` + strconv.FormatInt(n, 10) + `}`),
				}); err != nil {
					f.emitErrs.Add(1)
					return
				}
				f.low.Store(n)
				n++
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return f
}

func (f *flood) stop() {
	f.cancel()
	f.wg.Wait()
}

// outcome is what an outage did to the streams, for the test's log and the
// fault matrix.
type outcome struct {
	highSent, highStored, highDups, highReordered int
	lowSent, lowStored, lowGaps, lowReordered     int
	lowDropped, lowFailed                         float64
}

// lowLostAfterAck is how many low-lane gaps exceed the drops counted: events
// the server acknowledged and lost (at least; a lost ack counts the other way).
func (o outcome) lowLostAfterAck() int {
	return int(max(0, float64(o.lowGaps)-o.lowDropped))
}

func (o outcome) String() string {
	return fmt.Sprintf("high: sent %d stored %d dups %d reordered %d; low: sent %d stored %d gaps %d reordered %d dropped %.0f (failed publishes %.0f)",
		o.highSent, o.highStored, o.highDups, o.highReordered, o.lowSent, o.lowStored, o.lowGaps, o.lowReordered, o.lowDropped, o.lowFailed)
}

// checkStreams reads both lanes of f's session back and checks the
// guarantees: every high-lane event exactly once, in upstream order; low-lane
// telemetry in order without duplicates, its Connector-Seq gaps equal to
// connector_lane_dropped_total (drops of the oldest and publishes lost in
// flight), less the few lost-in-flight publishes the server stored anyway.
//
// unconfirmed is how many events one failed low-lane publish may count as
// dropped although the server stored them (unconfirmedPerFailure).
// lostAfterAck is how many low-lane gaps may have no drop to explain them
// (events the server acknowledged and then lost: persist mode async).
func checkStreams(t *testing.T, js jetstream.JetStream, reg *prometheus.Registry, f *flood, unconfirmed, lostAfterAck float64) outcome {
	t.Helper()
	o := outcome{highSent: int(f.high.Load()), lowSent: int(f.low.Load())}
	high := readAll(js, subjects.StreamLaserSellExit, subjects.LaserSellExit(f.session, "W"), 60*time.Second)
	o.highStored = len(high)
	seen := map[int]bool{}
	for i, m := range high {
		var p struct{ N int }
		if err := json.Unmarshal(m.Data(), &p); err != nil {
			t.Fatalf("high-lane payload %q: %v", m.Data(), err)
		}
		if seen[p.N] {
			o.highDups++
		}
		seen[p.N] = true
		if p.N != i+1 {
			o.highReordered++
		}
		if id := m.Headers().Get(subjects.HeaderMsgID); id != "h-"+strconv.Itoa(p.N) {
			t.Errorf("event %d carries Nats-Msg-Id %q", p.N, id)
		}
	}
	low := readAll(js, subjects.StreamLaserSellPnL, subjects.LaserSellPnL(f.session, "1"), 60*time.Second)
	o.lowStored = len(low)
	prev := uint64(0)
	for _, m := range low {
		seq, err := strconv.ParseUint(m.Headers().Get(subjects.HeaderSeq), 10, 64)
		if err != nil {
			t.Fatalf("low-lane Connector-Seq: %v", err)
		}
		if seq <= prev {
			o.lowReordered++
		} else {
			o.lowGaps += int(seq - prev - 1)
			prev = seq
		}
	}
	o.lowGaps += o.lowSent - int(prev) // lost at the end
	o.lowDropped = laneMetric(t, reg, "connector_lane_dropped_total", "", "")
	o.lowFailed = laneMetric(t, reg, "connector_publish_errors_total", "low", "")

	if o.highStored != o.highSent || o.highDups != 0 || o.highReordered != 0 {
		t.Errorf("high lane not exactly once in order: %s", o)
	}
	if o.lowReordered != 0 {
		t.Errorf("low lane reordered or duplicated: %s", o)
	}
	// A publish whose ack was lost with the connection counts as dropped but
	// may be stored: gaps <= dropped, short by at most what the failed
	// publishes left unconfirmed.
	if float64(o.lowGaps) > o.lowDropped+lostAfterAck || float64(o.lowGaps) < o.lowDropped-o.lowFailed*unconfirmed {
		t.Errorf("low-lane gaps not accounted for by drops: %s", o)
	}
	if f := laneMetric(t, reg, "connector_publish_failed_total", "low", ""); f != 0 {
		t.Errorf("%v low-lane events failed (abandoned)", f)
	}
	if f := laneMetric(t, reg, "connector_publish_failed_total", "high", ""); f != 0 {
		t.Errorf("%v high-lane events failed", f)
	}
	return o
}

// startFloodEnv is connectortest's environment with one echo session whose
// lanes are small, so an outage fills them at once.
func startFloodEnv(t *testing.T, name string, ackTimeout time.Duration) (*connectortest.Env, *echoSource, func() error) {
	env := connectortest.Start(t, connectortest.Options{AckTimeout: ackTimeout, DrainTimeout: 30 * time.Second})
	src := newEcho(t, env, name, connector.LaneSizes{High: floodHighLane, Low: floodLowLane})
	return env, src, env.Run()
}

const (
	floodHighLane = 64
	floodLowLane  = 256
)

// unconfirmedPerFailure is how many low-lane events one failed publish may
// count as dropped although the server stored them: the publish itself, or,
// with fast batches, the events sent after the batch's last flow ack (at
// most the window, two flow acks; these tests run with the default).
func unconfirmedPerFailure(rt *connector.Runtime) float64 {
	if mode, _ := rt.LowLanePublishing(); mode == connector.LowLaneFastBatch {
		return connector.DefaultPublishWindow
	}
	return 1
}
