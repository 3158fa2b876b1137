package connector_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

type idleSource struct{}

func (idleSource) Commands() []string                                     { return nil }
func (idleSource) Run(ctx context.Context) error                          { <-ctx.Done(); return nil }
func (idleSource) Handle(context.Context, connector.Command) (any, error) { return nil, nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFleetHolds1000Leases measures what one replica pays to keep
// 1,000 sessions' leases at the default TTL (15 s: a renewal per lease every
// 3.75 s) with fleet membership: lease writes per second, NATS messages on
// the leases bucket's subjects, and CPU (this process: the replica and the
// embedded NATS server). Run: go test -run '^$' -bench FleetHolds1000 -benchtime 1x ./connector/
func BenchmarkFleetHolds1000Leases(b *testing.B) {
	const n, ttl, window = 1000, 15 * time.Second, 15 * time.Second
	env := connectortest.Start(b, connectortest.Options{Kinds: []subjects.Kind{probeKind()}})
	ctx := context.Background()
	rt, err := connector.New(ctx, connector.Options{
		HighConn: env.Connect(), LowConn: env.Connect(), Kinds: []subjects.Kind{probeKind()},
		Metrics: connector.NewMetrics(prometheus.NewRegistry()), Log: env.Log,
	})
	if err != nil {
		b.Fatal(err)
	}
	kv, err := connector.ProvisionLeases(ctx, env.JS, ttl, 1)
	if err != nil {
		b.Fatal(err)
	}
	mkv, err := env.JS.CreateOrUpdateKeyValue(ctx, connector.MembersBucket(ttl, 1))
	if err != nil {
		b.Fatal(err)
	}
	sessions := make([]connector.Session, n)
	keys := make([]string, n)
	for i := range sessions {
		sessions[i] = connector.Session{Kind: "probe", Name: fmt.Sprintf("s%04d", i),
			Open: func(*connector.Host) (connector.Source, error) { return idleSource{}, nil }}
		keys[i] = sessions[i].Key()
	}
	members, err := connector.NewMembers(mkv, connector.MembersOptions{Replica: "r1", Sessions: keys, Heartbeat: ttl / 4, Settle: ttl / 3, Log: env.Log})
	if err != nil {
		b.Fatal(err)
	}
	fleet, err := connector.NewFleet(rt, kv, sessions, connector.FleetOptions{Replica: "r1", TTL: ttl, Members: members, Log: env.Log})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = rt.Run(runCtx) })
	wg.Go(func() { members.Run(runCtx) })
	wg.Go(func() { _ = fleet.Run(runCtx) })
	defer func() { cancel(); wg.Wait() }()
	start := time.Now()
	select {
	case <-fleet.Settled():
	case <-time.After(5 * time.Minute):
		b.Fatal("1,000 sessions not started in 5 minutes")
	}
	if got := len(rt.Running()); got != n {
		b.Fatalf("%d sessions running, want %d", got, n)
	}
	startup := time.Since(start)
	var msgs atomic.Int64
	sub, err := env.Connect().Subscribe("$KV."+subjects.BucketLeases+".>", func(*nats.Msg) { msgs.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	b.ResetTimer()
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(window)
	cpu, elapsed := cpuTime()-cpu0, time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(msgs.Load())/elapsed.Seconds(), "lease-writes/s")
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds()*100, "cpu-%")
	b.Logf("MEASURED %d leases, TTL %v: %d sessions started and leased in %v; over %v: %.0f lease writes/s (expected %d x 10 / 15 s = %.0f: a renewal every TTL/10), CPU %.1f %% of one core (replica + embedded NATS server, idle sources)",
		n, ttl, n, startup.Round(time.Millisecond), window, float64(msgs.Load())/elapsed.Seconds(), n, float64(n)*10/15, cpu.Seconds()/elapsed.Seconds()*100)
}
