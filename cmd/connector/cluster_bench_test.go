package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// BenchmarkClusterLeaderKill kills the node leading LASERSELL_EXIT again and
// again under a `connector run` process on the R3 cluster (exits every
// 20 ms, 500 PnL/s), restarting it on its store after each kill, and
// measures the time from each kill to the next exit stored, and to the new
// leader reported by the JetStream API. At the end every exit the simulator
// sent must be stored once and in order (Connector-Seq complete and in order
// in every high-lane stream). Knobs: BENCH_CLUSTER_KILLS (default 5) and
// BENCH_CLUSTER_ACK_TIMEOUT (CONNECTOR_ACK_TIMEOUT, default 5s, the
// connector's). Run it once:
//
//	go test -run '^$' -bench ClusterLeaderKill -benchtime 1x -timeout 10m ./cmd/connector/
func BenchmarkClusterLeaderKill(b *testing.B) {
	kills, err := strconv.Atoi(envOr("BENCH_CLUSTER_KILLS", "5"))
	if err != nil || kills < 1 {
		b.Fatalf("BENCH_CLUSTER_KILLS=%q: want a positive count", os.Getenv("BENCH_CLUSTER_KILLS"))
	}
	ackTimeout := envOr("BENCH_CLUSTER_ACK_TIMEOUT", "5s")
	lcfg := clusterSimConfig(500)
	ls := lssim.New(lcfg, zerolog.Nop())
	lsURL, err := ls.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ls.Close)
	r := newClusterRig(b, ls, lcfg.APIKey, lsURL)
	env := r.env("solo", freeLoopbackAddr(b), false)
	env["CONNECTOR_ACK_TIMEOUT"] = ackTimeout
	p := startConnectorProc(b, "solo", env)
	r.waitExitsAfter(b, 0, 30, 60*time.Second, "exit signals stored on the cluster")

	var stored, elected []time.Duration
	b.ResetTimer()
	for i := range kills {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		leader, err := r.c.StreamLeader(ctx, subjects.StreamLaserSellExit)
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		seq := lastSeq(r.js, subjects.StreamLaserSellExit)
		killed := time.Now()
		r.c.Kill(leader)
		if _, err := r.c.WaitStreamLeader(ctx, subjects.StreamLaserSellExit, leader); err != nil {
			cancel()
			b.Fatal(err)
		}
		cancel()
		elected = append(elected, time.Since(killed))
		r.waitExitsAfter(b, seq, 0, 60*time.Second, fmt.Sprintf("the next exit stored after kill %d", i+1))
		stored = append(stored, time.Since(killed))
		b.Logf("kill %d: leader n%d; new leader reported after %v, next exit stored after %v",
			i+1, leader, elected[i].Round(time.Millisecond), stored[i].Round(time.Millisecond))
		r.c.Restart(leader)
		r.waitExitsAfter(b, lastSeq(r.js, subjects.StreamLaserSellExit), 20, 60*time.Second, "exits flowing after the restart")
	}
	b.StopTimer()
	r.ls.SetPnLRate(0) // the flood ends, so that a loaded machine catches up
	r.waitCaughtUp(b, 60*time.Second, 0)
	if err := p.stop(40 * time.Second); err != nil {
		b.Fatal(err)
	}
	checkLeaseKept(b, p, 1)
	exits, _ := r.checkHighLanes(b, laserSellHighStreams...)
	sent := ls.Stats().ExitSignalsSent
	lost := int64(sent) - int64(len(exits))
	if lost != 0 {
		b.Errorf("exits: %d sent, %d stored", sent, len(exits))
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	fmt.Printf("RESULT cluster_leader_kills %d\n", kills)
	fmt.Printf("RESULT cluster_ack_timeout_ms %.0f\n", ms(mustDuration(b, ackTimeout)))
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{{"next_exit_stored", stored}, {"new_leader_reported", elected}} {
		fmt.Printf("RESULT cluster_kill_to_%s_p50_ms %.0f\n", s.name, ms(percentile(s.d, 50)))
		fmt.Printf("RESULT cluster_kill_to_%s_p99_ms %.0f\n", s.name, ms(percentile(s.d, 99)))
		fmt.Printf("RESULT cluster_kill_to_%s_max_ms %.0f\n", s.name, ms(slices.Max(s.d)))
	}
	fmt.Printf("RESULT cluster_exits_sent %d\n", sent)
	fmt.Printf("RESULT cluster_exits_lost %d\n", lost)
	fmt.Printf("RESULT cluster_lease_changes 0\n") // checkLeaseKept failed the run otherwise
}

// percentile is the nearest-rank percentile of ds (for fewer than 100
// values, p99 is the largest).
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}

func mustDuration(tb testing.TB, s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		tb.Fatalf("%q: %v", s, err)
	}
	return d
}
