package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// BenchmarkFleetTakeover runs two `connector run` replicas (a LaserSell
// session with exits every 20 ms and a streaming robot, both preferring
// replica a) and ends the owner again and again, alternating SIGTERM and
// SIGKILL; after each, the ended replica is started again under its name
// and the fleet left to settle (the sessions are handed back to it). Per
// signal it measures the time to the new owner's configure at the
// LaserSell upstream. Over the whole series it samples, every millisecond,
// how many upstream sessions the simulators see at once, and at the end it
// counts the exits lost, stored twice and stored out of order. Knobs:
// BENCH_FLEET_ROUNDS (default 5; each round is one SIGTERM and one SIGKILL)
// and BENCH_FLEET_TTL (CONNECTOR_LEASE_TTL, default 2s). Run it once:
//
//	go test -run '^$' -bench FleetTakeover -benchtime 1x -timeout 10m ./cmd/connector/
func BenchmarkFleetTakeover(b *testing.B) {
	rounds, err := strconv.Atoi(envOr("BENCH_FLEET_ROUNDS", "5"))
	if err != nil || rounds < 1 {
		b.Fatalf("BENCH_FLEET_ROUNDS=%q: want a positive count", os.Getenv("BENCH_FLEET_ROUNDS"))
	}
	ttl := mustDuration(b, envOr("BENCH_FLEET_TTL", "2s"))
	const session, robotName = "fleet", "arm" // both prefer a among {a, b}
	nsrv, _, js := startTestNATS(b)
	lcfg := clusterSimConfig(100)
	ls, lsURL, robot, robotAddr := startSims(b, lcfg)
	httpAddrs := map[string]string{"a": freeLoopbackAddr(b), "b": freeLoopbackAddr(b)}
	env := func(name string) map[string]string {
		return map[string]string{
			"NATS_URL": nsrv.URL(), "CONNECTOR_HTTP_ADDR": httpAddrs[name], "LOG_LEVEL": "warn", "LOG_FORMAT": "json",
			"CONNECTOR_REPLICA": name, "CONNECTOR_LEASE_TTL": ttl.String(),
			"LASERSELL_URL": lsURL, "LASERSELL_API_KEY": lcfg.APIKey, "LASERSELL_SESSION": session,
			"LASERSELL_WALLETS": "TakeWallet111111111111111111111111111111111", "LASERSELL_TARGET_PROFIT_PCT": "5",
			"LASERSELL_BACKOFF_MAX": "300ms",
			"OPENSTREAM_ROBOTS":     robotName + "=" + robotAddr, "OPENSTREAM_BACKOFF_MAX": "300ms",
			"OPENSTREAM_MONITORS": robotName + "/pose=/project/robot/po_cur@20ms",
		}
	}
	established := func() error {
		if n := ls.ActiveSessions(); n != 1 {
			return fmt.Errorf("%d LaserSell sessions", n)
		}
		if n := robot.Active(); n < 1 {
			return fmt.Errorf("%d robot connections", n)
		}
		return nil
	}
	// settled: the preferred replica owns both sessions and the other one
	// agrees, and the upstream sessions are up.
	settled := func() error {
		for name, addr := range httpAddrs {
			st, err := readFleetStatus(addr)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if len(st.Leases) != 2 {
				return fmt.Errorf("%s lists %d leases", name, len(st.Leases))
			}
			for _, l := range st.Leases {
				if !l.Settled || l.Replica != l.Preferred {
					return fmt.Errorf("%s sees %s: %+v", name, l.Session, l)
				}
			}
		}
		return established()
	}
	procs := map[string]*connectorProc{"a": startConnectorProc(b, "a0", env("a"))}
	waitUntil(b, 20*time.Second, "a's upstream sessions established", established)
	time.Sleep(200 * time.Millisecond)
	steadyRobot := robot.Active() // one owner's connections to the robot
	procs["b"] = startConnectorProc(b, "b0", env("b"))
	waitUntil(b, 20*time.Second, "the fleet settled", settled)
	peaks := samplePeaks(ls.ActiveSessions, robot.Active)

	takeovers := map[string][]time.Duration{}
	b.ResetTimer()
	for i := range rounds {
		for _, signal := range []string{"SIGTERM", "SIGKILL"} {
			conns := ls.Connections()
			at := time.Now()
			switch signal {
			case "SIGTERM":
				if err := procs["a"].stop(20 * time.Second); err != nil {
					b.Fatalf("round %d: a after SIGTERM: %v", i+1, err)
				}
			default:
				procs["a"].kill()
			}
			cf := newUpstreamConfigure(b, ls, conns, ttl+20*time.Second, "b taking over after a's "+signal, established)
			d := cf.At.Sub(at)
			takeovers[signal] = append(takeovers[signal], d)
			b.Logf("round %d, %s: b's configure at the upstream %v after the signal", i+1, signal, d.Round(time.Millisecond))
			procs["a"] = startConnectorProc(b, fmt.Sprintf("a%d%s", i+1, signal), env("a"))
			waitUntil(b, ttl+20*time.Second, "the sessions handed back to a", settled)
		}
	}
	b.StopTimer()
	peakLS, peakRobot := peaks.finish()
	for _, p := range procs {
		if err := p.stop(20 * time.Second); err != nil {
			b.Fatal(err)
		}
	}
	exits := readStream(b, js, subjects.StreamLaserSellExit)
	reordered := checkExitsOnce(b, exits) // fails the run for an exit stored twice
	sent := ls.Stats().ExitSignalsSent
	lost := int64(sent) - int64(len(exits))
	if peakLS > 1 {
		b.Errorf("the LaserSell simulator saw %d sessions at once; one owner opens one", peakLS)
	}
	if peakRobot > steadyRobot {
		b.Errorf("the robot saw %d connections at once; one owner opens %d", peakRobot, steadyRobot)
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	fmt.Printf("RESULT fleet_rounds %d\n", rounds)
	fmt.Printf("RESULT fleet_lease_ttl_ms %.0f\n", ms(ttl))
	for _, signal := range []string{"SIGTERM", "SIGKILL"} {
		d := takeovers[signal]
		name := "fleet_" + map[string]string{"SIGTERM": "sigterm", "SIGKILL": "sigkill"}[signal] + "_to_configure"
		fmt.Printf("RESULT %s_p50_ms %.0f\n", name, ms(percentile(d, 50)))
		fmt.Printf("RESULT %s_p99_ms %.0f\n", name, ms(percentile(d, 99)))
		fmt.Printf("RESULT %s_min_ms %.0f\n", name, ms(slices.Min(d)))
		fmt.Printf("RESULT %s_max_ms %.0f\n", name, ms(slices.Max(d)))
	}
	fmt.Printf("RESULT fleet_peak_lasersell_sessions %d\n", peakLS)
	fmt.Printf("RESULT fleet_peak_robot_connections %d\n", peakRobot)
	fmt.Printf("RESULT fleet_steady_robot_connections %d\n", steadyRobot)
	fmt.Printf("RESULT fleet_exits_sent %d\n", sent)
	fmt.Printf("RESULT fleet_exits_lost %d\n", lost)
	fmt.Printf("RESULT fleet_exits_reordered %d\n", reordered)
	fmt.Printf("RESULT fleet_exits_duplicated 0\n") // checkExitsOnce failed the run otherwise
}
