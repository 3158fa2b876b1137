package bench

import (
	"context"
	"flag"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// coreRig is an in-process connector Runtime publishing to a NATS server in a
// child process, so a CPU profile of the benchmark (-cpuprofile) holds only
// the connector core and the nats.go client.
type coreRig struct {
	rt   *connector.Runtime
	reg  *prometheus.Registry
	host *connector.Host
	stop context.CancelFunc
	done chan error
}

// skipOneShot skips a micro benchmark under a fixed small iteration count
// (-benchtime 1x is for BenchmarkSystem): per-op figures from a handful of
// events mean nothing.
func skipOneShot(b *testing.B) {
	if f := flag.Lookup("test.benchtime"); f != nil {
		v := f.Value.String()
		if n, err := strconv.Atoi(strings.TrimSuffix(v, "x")); err == nil && strings.HasSuffix(v, "x") && n < 10000 {
			b.Skipf("-benchtime %s is too few events; run with -benchtime 1s or 200000x", v)
		}
	}
}

func startCore(b *testing.B, singleLane bool) *coreRig {
	b.Helper()
	skipOneShot(b)
	dir := b.TempDir()
	var nr struct{ URL string }
	startRole(b, b.Cleanup, dir, "nats-server", "nats", []string{"BENCH_STORE_DIR=" + dir + "/store"}, nil, &nr)
	conns := make([]*nats.Conn, 2)
	for i := range conns {
		nc, err := nats.Connect(nr.URL)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		conns[i] = nc
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt, err := connector.New(ctx, connector.Options{
		HighConn: conns[0], LowConn: conns[1], Kinds: []subjects.Kind{subjects.LaserSell()},
		SingleLane: singleLane, Metrics: connector.NewMetrics(reg), Log: zerolog.Nop(),
	})
	if err != nil {
		b.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	rig := &coreRig{rt: rt, reg: reg, stop: stop, done: make(chan error, 1)}
	// One session whose source does nothing: the benchmark emits on its host.
	session := connector.Session{
		Kind: subjects.KindLaserSell, Name: "bench",
		Open: func(h *connector.Host) (connector.Source, error) { rig.host = h; return idleSource{}, nil },
	}
	go func() { rig.done <- rt.Run(rctx, session) }()
	select {
	case <-rt.Serving():
	case err := <-rig.done:
		b.Fatalf("runtime stopped at start: %v", err)
	}
	b.Cleanup(func() { stop(); <-rig.done })
	return rig
}

// idleSource serves no command and emits nothing by itself.
type idleSource struct{}

func (idleSource) Commands() []string                                     { return nil }
func (idleSource) Run(ctx context.Context) error                          { <-ctx.Done(); return nil }
func (idleSource) Handle(context.Context, connector.Command) (any, error) { return nil, nil }

// metric sums every series of a metric whose labels include label=value.
func (r *coreRig) metric(name, label, value string) float64 {
	families, _ := r.reg.Gather()
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
		}
	}
	return sum
}

// pnlEvents returns n pnl_update events shaped like the LaserSell source's.
func pnlEvents(n int) []connector.Event {
	gen := newPnLGen(3)
	evs := make([]connector.Event, n)
	for i := range evs {
		id := i % 10
		evs[i] = connector.Event{
			Subject: subjects.LaserSellPnL("bench", strconv.Itoa(id+1)), Lane: connector.LaneLow,
			Payload: gen.next(id), Type: "pnl_update", UpstreamSession: "1",
		}
	}
	return evs
}

// BenchmarkPublishPath measures the core publish path in process: Host.Emit
// of b.N pnl_update events until JetStream has acknowledged all of them.
//
//   - low-fifo: CONNECTOR_SINGLE_LANE, so the lane blocks instead of dropping
//     and every event is stored; low-lane events carry no Nats-Msg-Id.
//   - high: exit-signal-like events with a Nats-Msg-Id (deduplicated by the
//     server), through the high lane.
func BenchmarkPublishPath(b *testing.B) {
	for _, c := range []struct {
		name string
		lane connector.Lane
	}{{"low-fifo", connector.LaneLow}, {"high", connector.LaneHigh}} {
		b.Run(c.name, func(b *testing.B) {
			rig := startCore(b, true)
			evs := pnlEvents(1024)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				ev := evs[i%len(evs)]
				ev.Lane = c.lane
				if c.lane == connector.LaneHigh {
					ev.MsgID = "exit:bench:" + strconv.Itoa(i)
				}
				if err := rig.host.Emit(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
			want := float64(b.N)
			for rig.metric("connector_published_total", "", "") < want {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkEmitLow measures Host.Emit on the low lane (the ring that drops
// its oldest event when full) while its publisher drains it into JetStream:
// the cost the upstream reader pays per pnl_update.
func BenchmarkEmitLow(b *testing.B) {
	rig := startCore(b, false)
	evs := pnlEvents(1024)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		_ = rig.host.Emit(ctx, evs[i%len(evs)])
	}
	b.StopTimer()
	b.ReportMetric(rig.metric("connector_lane_dropped_total", "", "")/float64(b.N), "dropped/op")
}
