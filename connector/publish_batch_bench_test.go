package connector_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// BenchmarkLowLanePublishing compares the low lane's two ways of publishing
// on the same embedded server (file storage), in one run: fast batches and
// one message at a time (PublishMsgAsync). Each round emits b.N PnL-sized
// events into a lane that holds them all and waits until all are stored; the
// rounds of the two modes alternate (BENCH_ROUNDS per mode, default 3; the
// publish window is BENCH_WINDOW, default the runtime's) and
// the medians and their ratios are reported. CPU is the whole process's (the
// connector core, nats.go and the embedded nats-server) per stored event.
//
//	go test -run '^$' -bench LowLanePublishing -benchtime 200000x ./connector/
func BenchmarkLowLanePublishing(b *testing.B) {
	if b.N < 10000 {
		// The calibration run (b.N = 1), or a count too small to mean
		// anything: -benchtime 200000x is the measurement.
		return
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	// The third mode is the fast batch with Connector-Seq alone
	// (CONNECTOR_LOW_LANE_RECEIVED=false): what the Connector-Received
	// header costs.
	modes := []struct {
		name                   string
		perMessage, noReceived bool
	}{{"fast_batch", false, false}, {"per_message", true, false}, {"fast_batch_seq_only", false, true}}
	rates := make([][]float64, len(modes))
	cpus := make([][]float64, len(modes))
	for r := 0; r < rounds; r++ {
		for i, mode := range modes {
			rate, cpu := lowLaneRound(b, connectortest.Options{LowLanePerMessage: mode.perMessage, LowLaneNoReceived: mode.noReceived}, b.N)
			rates[i] = append(rates[i], rate)
			cpus[i] = append(cpus[i], cpu)
			fmt.Printf("round %d %s: %.0f stored/s, %.2f cpu-µs/event\n", r+1, mode.name, rate, cpu)
		}
	}
	med := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	for i, mode := range modes {
		fmt.Printf("RESULT lowlane_%s_stored_per_s %.0f\n", mode.name, med(rates[i]))
		fmt.Printf("RESULT lowlane_%s_cpu_us_per_event %.2f\n", mode.name, med(cpus[i]))
	}
	fmt.Printf("RESULT lowlane_fast_batch_over_per_message_stored %.2f\n", med(rates[0])/med(rates[1]))
	fmt.Printf("RESULT lowlane_fast_batch_over_per_message_cpu %.2f\n", med(cpus[0])/med(cpus[1]))
	fmt.Printf("RESULT lowlane_seq_only_over_both_headers_stored %.2f\n", med(rates[2])/med(rates[0]))
	fmt.Printf("RESULT lowlane_seq_only_over_both_headers_cpu %.2f\n", med(cpus[2])/med(cpus[0]))
	b.ReportMetric(med(rates[0])/med(rates[1]), "x-stored/s")
	b.ReportMetric(med(cpus[0])/med(cpus[1]), "x-cpu/event")
}

// lowLaneRound stores n events through a fresh server and runtime and
// returns the stored rate and the process CPU per event in microseconds.
func lowLaneRound(b *testing.B, opts connectortest.Options, n int) (rate, cpuMicros float64) {
	payload := []byte(`{"type":"pnl_update","position_id":1234567,"wallet":"9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin","pnl_pct":12.3456,"price":0.000123}`)
	opts.Window, _ = strconv.Atoi(os.Getenv("BENCH_WINDOW")) // 0: the default
	env := connectortest.Start(b, opts)
	if got, why := env.Runtime.LowLanePublishing(); (got == connector.LowLanePerMessage) != opts.LowLanePerMessage {
		b.Fatalf("mode %s (%s)", got, why)
	}
	stop := env.Run()
	defer func() {
		// The runtime first (it drains into the server), then the server:
		// each round's server would otherwise live until the benchmark ends.
		if err := stop(); err != nil {
			b.Errorf("runtime: %v", err)
		}
		env.Server.Stop()
	}()
	host := env.Host(subjects.KindLaserSell, "bench", connector.LaneSizes{Low: n + 1})
	subject := subjects.LaserSellPnL("bench", "1")
	where := map[string]string{"source": subjects.KindLaserSell, "session": "bench", "lane": "low"}
	cpu0 := cpuTime()
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := host.Emit(context.Background(), connector.Event{Subject: subject, Lane: connector.LaneLow, Type: "pnl_update", Payload: payload}); err != nil {
			b.Fatal(err)
		}
	}
	for env.MetricWhere("connector_published_total", where) < float64(n) {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("published %v of %d", env.MetricWhere("connector_published_total", where), n)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	if d := env.MetricWhere("connector_lane_dropped_total", map[string]string{"source": subjects.KindLaserSell, "session": "bench"}); d != 0 {
		b.Fatalf("%v dropped", d)
	}
	return float64(n) / elapsed.Seconds(), cpu.Seconds() * 1e6 / float64(n)
}
