package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outage benchmark parameters.
const (
	outageWarmup  = 3 * time.Second // flood before the kill
	outageAfter   = 3 * time.Second // flood after publishing resumed
	outageRSSTick = 100 * time.Millisecond
	outageExitGap = 10 * time.Millisecond // one exit signal every
	rssTarget     = 256 << 20
)

// BenchmarkOutage runs the real connector binary against a real nats-server
// process (built from the module cache) under a full PnL flood plus an exit
// signal every 10 ms, kills nats-server with SIGKILL, keeps it down for 1 s,
// 10 s and 60 s, restarts it on the same store directory, and measures the
// connector's peak RSS, the exits lost, duplicated or reordered, low-lane
// drops against Connector-Seq gaps, and the time until publishing resumed.
//
//	go test -run '^$' -bench Outage -benchtime 1x -timeout 10m ./bench/
//
// BENCH_OUTAGE_PNL_RATE fixes the PnL rate instead of probing for it.
func BenchmarkOutage(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("needs /proc")
	}
	s := setupOutage(b)
	rate := s.outageRate()
	b.Logf("PnL flood rate: %.0f/s", rate)
	var rows []string
	for _, d := range []time.Duration{time.Second, 10 * time.Second, 60 * time.Second} {
		b.Run(d.String(), func(sb *testing.B) {
			r := s.results.cached("outage-"+d.String(), func() map[string]float64 {
				s.b = sb
				defer func() { s.b = b }()
				return s.outage(d, rate)
			})
			report(sb, r, "peak-rss-MiB", "exits-sent", "exits-lost", "exits-dup", "exits-reordered",
				"low-drops", "low-failed", "low-gaps", "low-reordered", "resume-ms", "caught-up-ms", "other-cores")
			rows = append(rows, fmt.Sprintf("| %s | %.0f | %.1f (%s) | %.0f / %.0f / %.0f / %.0f (+%.0f refused by the sim) | %.0f + %.0f = %.0f | %.0f | %.0f | %.0f ms | %.0f ms | %.2f |",
				d, r["pnl-rate"], r["peak-rss-MiB"], passFail(r["peak-rss-MiB"] < rssTarget>>20), r["exits-sent"], r["exits-lost"], r["exits-dup"], r["exits-reordered"], r["exits-refused"],
				r["low-drops"], r["low-failed"], r["low-drops"]+r["low-failed"], r["low-gaps"], r["low-reordered"], r["resume-ms"], r["caught-up-ms"], r["other-cores"]))
		})
	}
	fmt.Printf("\n## NATS outage (nats-server SIGKILLed, restarted on the same store)\n\n"+
		"| outage | PnL offered/s | connector peak RSS MiB (< 256) | exits sent / lost / dup / reordered | low drops + failed in flight | Connector-Seq gaps | low reordered | resume after restart | caught up | other load, cores |\n"+
		"|---|---|---|---|---|---|---|---|---|---|\n%s\n", strings.Join(rows, "\n"))
}

// outageSystem is the benchmark rig with a nats-server binary that can be
// killed and started again on the same port and store.
type outageSystem struct {
	*system
	natsBin string
}

func setupOutage(b *testing.B) *outageSystem {
	dir, err := os.MkdirTemp("", "connector-outage-")
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("logs in %s", dir)
	root, err := filepath.Abs("..")
	if err != nil {
		b.Fatal(err)
	}
	s := &outageSystem{system: &system{b: b, top: b, dir: dir, bin: filepath.Join(dir, "connector"),
		results: &results{cache: map[string]map[string]float64{}, latency: map[string]map[string]float64{}}},
		natsBin: filepath.Join(dir, "nats-server")}
	b.Cleanup(func() { _ = os.Remove(s.natsBin) })
	builds := [][]string{{"-o", s.natsBin, "github.com/nats-io/nats-server/v2"}}
	if bin := os.Getenv("BENCH_CONNECTOR_BIN"); bin != "" {
		s.bin = bin
	} else {
		b.Cleanup(func() { _ = os.Remove(s.bin) })
		builds = append(builds, []string{"-o", s.bin, "./cmd/connector"})
	}
	for _, args := range builds {
		build := exec.Command("go", append([]string{"build"}, args...)...)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return s
}

// startNATS starts nats-server on addr with JetStream in store and waits
// until it accepts connections.
func (s *outageSystem) startNATS(addr, store string) *child {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(s.natsBin, "-a", host, "-p", port, "-js", "-sd", store, "-n", "outage")
	c := startChild(s.b, s.top.Cleanup, s.dir, "nats-server", cmd)
	c.role = "nats"
	err := waitFor(30*time.Second, func() error {
		select {
		case <-c.exited:
			return fmt.Errorf("nats-server exited: %v; see %s", c.waitErr, c.log.Name())
		default:
		}
		nc, err := nats.Connect("nats://"+addr, nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
	if err != nil {
		s.b.Fatalf("nats-server not ready: %v", err)
	}
	return c
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// rig starts nats-server, a simulator and the connector for one run.
func (s *outageSystem) rig(session string) (addr, store string, rn *run) {
	addr = freePort(s.b)
	store = filepath.Join(s.dir, "store-"+session)
	s.top.Cleanup(func() { _ = os.RemoveAll(store) })
	s.nats = s.startNATS(addr, store)
	s.natsURL = "nats://" + addr
	nc, err := nats.Connect(s.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		s.b.Fatal(err)
	}
	s.top.Cleanup(nc.Close)
	s.nc = nc
	if s.js, err = jetstream.New(nc); err != nil {
		s.b.Fatal(err)
	}
	return addr, store, s.startRun(session, false)
}

// outageRate returns the PnL rate of the flood: BENCH_OUTAGE_PNL_RATE, or
// the highest of a few rates (from 90000/s down by 15 %) the connector
// stores for 2 s without a drop, on a rig of its own.
func (s *outageSystem) outageRate() float64 {
	if v := os.Getenv("BENCH_OUTAGE_PNL_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil {
			s.b.Fatalf("BENCH_OUTAGE_PNL_RATE: %v", err)
		}
		return r
	}
	_, _, rn := s.rig("probe")
	defer func() {
		rn.stop()
		s.nats.stop()
	}()
	rate := 90000.0
	for range 5 {
		rn.setPnL(s.b, rate)
		time.Sleep(time.Second)
		a := s.sample("LASERSELL_PNL", rn)
		time.Sleep(2 * time.Second)
		z := s.sample("LASERSELL_PNL", rn)
		d := diff(a, z)
		s.b.Logf("probe %.0f/s: stored %.0f/s, dropped %.0f, other load %.2f cores", rate, d.stored/d.secs, d.dropped, d.other/d.secs)
		if d.dropped == 0 {
			break
		}
		rate *= 0.85
	}
	rn.setPnL(s.b, 0)
	return rate
}

// vmKiB reads a VmRSS or VmHWM line of /proc/<pid>/status, in KiB.
func vmKiB(pid int, field string) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseFloat(f[0], 64)
				return n
			}
		}
	}
	return 0
}

// outage runs one outage of length d under a PnL flood at rate.
func (s *outageSystem) outage(d time.Duration, rate float64) map[string]float64 {
	b := s.b
	session := "outage" + strings.TrimSuffix(d.String(), "s")
	addr, store, rn := s.rig(session)
	defer rn.stop()
	pid := rn.conn.cmd.Process.Pid

	var peakMu sync.Mutex
	peak := 0.0
	stopRSS := make(chan struct{})
	rssDone := make(chan struct{})
	go func() {
		defer close(rssDone)
		t := time.NewTicker(outageRSSTick)
		defer t.Stop()
		for {
			v := vmKiB(pid, "VmRSS")
			peakMu.Lock()
			peak = max(peak, v)
			peakMu.Unlock()
			select {
			case <-stopRSS:
				return
			case <-t.C:
			}
		}
	}()

	rn.setPnL(b, rate)
	if _, err := httpGet(rn.simControl + "/bench/exits/start?every=" + outageExitGap.String()); err != nil {
		b.Fatal(err)
	}
	time.Sleep(outageWarmup)
	busy0, self0 := machineBusy(), selfCPU()
	cpu0 := map[string]time.Duration{"connector": rn.conn.cpu(), "sim": rn.sim.cpu()}

	s.nats.kill() // its CPU until now is outside the window: the window starts here
	killed := time.Now()
	time.Sleep(d)
	pubBefore, err := scrape(rn.metricsURL)
	if err != nil {
		b.Fatal(err)
	}
	highBefore := pubBefore.sum("connector_published_total", `lane="high"`)
	restarted := time.Now()
	s.nats = s.startNATS(addr, store)
	var resume, caughtUp time.Duration
	err = waitFor(120*time.Second, func() error {
		p, err := scrape(rn.metricsURL)
		if err != nil {
			return err
		}
		if resume == 0 && p.sum("connector_published_total", `lane="high"`) > highBefore {
			resume = time.Since(restarted)
		}
		if resume == 0 || p.sum("connector_lane_depth", `lane="high"`) > 0 {
			return errNotYet
		}
		caughtUp = time.Since(restarted)
		return nil
	})
	if err != nil {
		b.Fatalf("publishing did not resume after the restart: %v", err)
	}
	time.Sleep(outageAfter)
	var rep driverReport
	if err := getJSON(rn.simControl+"/bench/exits/stop", &rep); err != nil {
		b.Fatal(err)
	}
	rn.setPnL(b, 0)
	busy1, self1 := machineBusy(), selfCPU()
	rig := (self1 - self0).Seconds() + (rn.conn.cpu() - cpu0["connector"]).Seconds() + (rn.sim.cpu() - cpu0["sim"]).Seconds() + s.nats.cpu().Seconds()
	elapsed := time.Since(killed).Seconds()
	other := max((busy1-busy0).Seconds()-rig, 0) / elapsed

	// Everything the simulator wrote must reach the stream.
	exits := s.readSession("LASERSELL_EXIT", "lasersell."+session+".exit.>", len(rep.Sent), drainWithin)
	// Let the low lane drain, then read it back.
	var prom promSample
	_ = waitFor(drainWithin, func() error {
		p, err := scrape(rn.metricsURL)
		if err != nil {
			return err
		}
		prom = p
		if p.sum("connector_lane_depth") > 0 || p.sum("connector_publish_inflight") > 0 {
			return errNotYet
		}
		return nil
	})
	close(stopRSS)
	<-rssDone
	hwm := vmKiB(pid, "VmHWM")
	peakMu.Lock()
	peakKiB := max(peak, hwm)
	peakMu.Unlock()

	r := map[string]float64{
		"pnl-rate": rate, "peak-rss-MiB": peakKiB / 1024, "exits-sent": float64(len(rep.Sent)), "exits-refused": float64(rep.Failed),
		"resume-ms": float64(resume.Milliseconds()), "caught-up-ms": float64(caughtUp.Milliseconds()), "other-cores": other,
		"low-drops":  prom.sum("connector_lane_dropped_total"),
		"low-failed": prom.sum("connector_publish_failed_total", `lane="low"`),
	}
	// Exits: lost, duplicated, reordered against the driver's record.
	seen := map[exitKey]int{}
	var recv []receipt
	for _, m := range exits {
		var rc receipt
		_ = json.Unmarshal(m.Data(), &rc)
		recv = append(recv, rc)
		seen[rc.key()]++
	}
	for _, n := range seen {
		r["exits-dup"] += float64(n - 1)
	}
	for i := range min(len(recv), len(rep.Sent)) {
		k := recv[i].key()
		if k.pos != rep.Sent[i].Pos || k.level != rep.Sent[i].Level {
			r["exits-reordered"]++
		}
	}
	r["exits-lost"] = float64(max(len(rep.Sent)-len(seen), 0))
	// Low lane: Connector-Seq in stream order.
	lowEvents := prom.sum("connector_events_total", `lane="low"`)
	var prev uint64
	gaps, reordered := 0.0, 0.0
	for _, m := range s.readSession("LASERSELL_PNL", "lasersell."+session+".pnl.*", -1, 2*time.Minute) {
		seq, _ := strconv.ParseUint(m.Headers().Get("Connector-Seq"), 10, 64)
		if seq <= prev {
			reordered++
			continue
		}
		gaps += float64(seq - prev - 1)
		prev = seq
	}
	gaps += lowEvents - float64(prev)
	r["low-gaps"], r["low-reordered"] = gaps, reordered
	if r["peak-rss-MiB"] >= rssTarget>>20 {
		s.top.Logf("outage %s: peak RSS %.1f MiB is over the %d MiB target", d, r["peak-rss-MiB"], rssTarget>>20)
	}
	s.nats.stop()
	return r
}

// readSession reads the messages of stream on filter in stream order: want
// of them (waiting up to wait for them), or, with want < 0, all it holds.
func (s *outageSystem) readSession(stream, filter string, want int, wait time.Duration) []jetstream.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if want < 0 {
		st, err := s.js.Stream(ctx, stream)
		if err != nil {
			s.b.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
		if err != nil {
			s.b.Fatal(err)
		}
		want = 0
		for _, n := range info.State.Subjects {
			want += int(n)
		}
	}
	cons, err := s.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		s.b.Fatal(err)
	}
	out := make([]jetstream.Msg, 0, want)
	for len(out) < want && ctx.Err() == nil {
		batch, err := cons.Fetch(min(want-len(out), 10000), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			s.b.Fatal(err)
		}
		for m := range batch.Messages() {
			out = append(out, m)
		}
	}
	return slices.Clip(out)
}
