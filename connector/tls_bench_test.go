package connector_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/internal/testpki"
	"github.com/jetbridge/connector/subjects"
)

// BenchmarkNATSTLSThroughput compares the core publish path over plain TCP
// and over mutual TLS (TLS 1.3, client certificates verified), in one run:
// each round starts a fresh in-process JetStream server (file storage) and
// runtime, emits b.N PnL-sized events into a low lane that holds them all
// (fast batches) and b.N/10 exit-sized events into the high lane (one
// publish acknowledged at a time), and times until the streams hold them.
// Modes alternate round by round (BENCH_ROUNDS per mode, default 3); the
// medians and the TLS/plain ratios are printed as RESULT lines. CPU is the
// whole process's (connector core, nats.go, nats-server, both ends of TLS).
//
//	go test -run '^$' -bench NATSTLSThroughput -benchtime 200000x ./connector/
func BenchmarkNATSTLSThroughput(b *testing.B) {
	if b.N < 10000 {
		return // the calibration run; -benchtime 200000x is the measurement
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	pki, err := testpki.NewSet(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	modes := []string{"plain", "tls"}
	type sample struct{ low, lowCPU, high float64 }
	got := map[string][]sample{}
	for r := 0; r < rounds; r++ {
		for _, mode := range modes {
			var s sample
			s.low, s.lowCPU, s.high = tlsBenchRound(b, pki, mode == "tls", b.N)
			got[mode] = append(got[mode], s)
			fmt.Printf("round %d %s: low lane %.0f stored/s (%.2f cpu-µs/event), high lane %.0f stored/s\n", r+1, mode, s.low, s.lowCPU, s.high)
		}
	}
	med := func(mode string, f func(sample) float64) float64 {
		var xs []float64
		for _, s := range got[mode] {
			xs = append(xs, f(s))
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	low := func(s sample) float64 { return s.low }
	lowCPU := func(s sample) float64 { return s.lowCPU }
	high := func(s sample) float64 { return s.high }
	for _, mode := range modes {
		fmt.Printf("RESULT nats_%s_low_stored_per_s %.0f\n", mode, med(mode, low))
		fmt.Printf("RESULT nats_%s_low_cpu_us_per_event %.2f\n", mode, med(mode, lowCPU))
		fmt.Printf("RESULT nats_%s_high_stored_per_s %.0f\n", mode, med(mode, high))
	}
	fmt.Printf("RESULT nats_tls_over_plain_low_stored %.2f\n", med("tls", low)/med("plain", low))
	fmt.Printf("RESULT nats_tls_over_plain_low_cpu %.2f\n", med("tls", lowCPU)/med("plain", lowCPU))
	fmt.Printf("RESULT nats_tls_over_plain_high_stored %.2f\n", med("tls", high)/med("plain", high))
	b.ReportMetric(med("tls", low)/med("plain", low), "x-low-stored/s")
	b.ReportMetric(med("tls", high)/med("plain", high), "x-high-stored/s")
}

// benchIdle is a source that emits nothing by itself.
type benchIdle struct{}

func (benchIdle) Commands() []string                                     { return nil }
func (benchIdle) Run(ctx context.Context) error                          { <-ctx.Done(); return nil }
func (benchIdle) Handle(context.Context, connector.Command) (any, error) { return nil, nil }

// tlsBenchRound stores n low-lane and n/10 high-lane events through a fresh
// server and runtime, over TLS or not, and returns the low lane's stored rate
// and process CPU per event (µs), and the high lane's stored rate.
func tlsBenchRound(b *testing.B, pki *testpki.Set, withTLS bool, n int) (low, lowCPU, high float64) {
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: b.TempDir(), NoSigs: true, NoLog: true}
	var clientOpts []nats.Option
	if withTLS {
		cfg, err := testpki.ServerConfig(pki.Server)
		if err != nil {
			b.Fatal(err)
		}
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pki.CA.Pool()
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = cfg, true, true, 2
		pair, err := tls.LoadX509KeyPair(pki.Client.CertFile, pki.Client.KeyFile)
		if err != nil {
			b.Fatal(err)
		}
		clientOpts = append(clientOpts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pki.CA.Pool(), Certificates: []tls.Certificate{pair}}))
	}
	ns := startServer(b, opts)
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }() // each round's server ends with it
	conn := func() *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), clientOpts...)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := nc.TLSConnectionState(); (err == nil) != withTLS {
			b.Fatalf("connection TLS is not %v", withTLS)
		}
		return nc
	}
	highConn, lowConn, probe := conn(), conn(), conn()
	defer highConn.Close()
	defer lowConn.Close()
	defer probe.Close()
	js, err := jetstream.New(probe)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	rt, err := connector.New(ctx, connector.Options{
		HighConn: highConn, LowConn: lowConn, Kinds: []subjects.Kind{subjects.LaserSell()},
		Metrics: connector.NewMetrics(prometheus.NewRegistry()), Log: zerolog.Nop(),
	})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			b.Errorf("runtime: %v", err)
		}
	}()
	<-rt.Serving()
	var host *connector.Host
	if err := rt.Start(context.Background(), connector.Session{
		Kind: subjects.KindLaserSell, Name: "bench", Lanes: connector.LaneSizes{Low: n + 1, High: 1024},
		Open: func(h *connector.Host) (connector.Source, error) { host = h; return benchIdle{}, nil },
	}); err != nil {
		b.Fatal(err)
	}

	pnl := []byte(`{"type":"pnl_update","position_id":1234567,"wallet":"9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin","pnl_pct":12.3456,"price":0.000123}`)
	cpu0, start := cpuTime(), time.Now()
	for i := 0; i < n; i++ {
		if err := host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellPnL("bench", "1"), Lane: connector.LaneLow, Type: "pnl_update", Payload: pnl}); err != nil {
			b.Fatal(err)
		}
	}
	waitStored(b, js, subjects.StreamLaserSellPnL, uint64(n))
	low, lowCPU = float64(n)/time.Since(start).Seconds(), (cpuTime()-cpu0).Seconds()*1e6/float64(n)

	exit := []byte(`{"type":"exit_signal_with_tx","session_id":1,"position_id":1234567,"wallet_pubkey":"9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin","reason":"target_profit","unsigned_tx_b64":"AAAA"}`)
	nHigh, before := n/10, lastStored(b, js, subjects.StreamLaserSellExit)
	start = time.Now()
	for i := 0; i < nHigh; i++ {
		if err := host.Emit(context.Background(), connector.Event{Subject: subjects.LaserSellExit("bench", "W"), Lane: connector.LaneHigh, Type: "exit_signal_with_tx", Payload: exit}); err != nil {
			b.Fatal(err)
		}
	}
	waitStored(b, js, subjects.StreamLaserSellExit, before+uint64(nHigh))
	return low, lowCPU, float64(nHigh) / time.Since(start).Seconds()
}

// lastStored is how many messages stream holds.
func lastStored(b *testing.B, js jetstream.JetStream, stream string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		b.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return info.State.Msgs
}

// waitStored waits until stream holds want messages (at most 2 minutes).
func waitStored(b *testing.B, js jetstream.JetStream, stream string, want uint64) {
	deadline := time.Now().Add(2 * time.Minute)
	for lastStored(b, js, stream) < want {
		if time.Now().After(deadline) {
			b.Fatalf("%s holds %d of %d", stream, lastStored(b, js, stream), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
