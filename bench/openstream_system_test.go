package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// Open Stream benchmark parameters (BENCHMARKS.md, section "Open Stream").
const (
	osPeriodMS   = 2 // MONITOR period of every robot: 500 data events/s each
	osMonitor    = "joints"
	osMonitorURL = "/project/robot/joints/joint_states"
	osControlURL = "/project/robot/trajectory/joint_traject_insert_point"
	osDataStream = subjects.StreamOpenStreamData

	osWarmup     = 1 * time.Second
	osWindow     = 4 * time.Second
	osLatTarget  = 20 * time.Millisecond
	osLatRobots  = 10 // robots whose data the latency consumer reads (evenly spread)
	osRounds     = 3  // interleaved rounds per N: connector, then the raw publishers
	osCtlWindow  = 4 * time.Second
	osCtlWarmup  = 500 * time.Millisecond
	osCtlTarget  = 2 * time.Millisecond
	osPayloadCap = 256 // data payloads captured for the raw publisher
)

// osScaleNs is the coarse search of the robot count (BENCH_OS_N overrides,
// e.g. BENCH_OS_N=25,50,75,100,150).
func osScaleNs() []int {
	ns := []int{25, 50, 75, 100}
	if v := os.Getenv("BENCH_OS_N"); v != "" {
		ns = ns[:0]
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
				ns = append(ns, n)
			}
		}
	}
	return ns
}

// osRig is one simulator process serving n controllers and one connector
// process with n robots.
type osRig struct {
	n          int
	names      []string
	sim        *child
	simControl string
	conn       *child
	metricsURL string
}

func osRobotName(i int) string { return fmt.Sprintf("r%03d", i+1) }

// startOSRig starts the simulator role with n listeners and `connector run`
// with OPENSTREAM_ROBOTS listing n robots, each with one MONITOR of
// joint_states at 2 ms; with control, robot r001 allows CONTROL of the
// trajectory services. It returns once every robot streams.
func (s *system) startOSRig(n int, label string, control bool) *osRig {
	b := s.b
	rig := &osRig{n: n}
	var rd osSimReady
	simArgs := []string{"-ts", "epoch"}
	if control {
		simArgs = append(simArgs, "-record-limit", "-1")
	}
	rig.sim = startRole(b, s.top.Cleanup, s.dir, "os-sim-"+label, roleOSSim, []string{"BENCH_OS_N=" + strconv.Itoa(n)}, simArgs, &rd)
	rig.sim.role = "sim"
	rig.simControl = rd.Control
	var robots, monitors []string
	for i, addr := range rd.Addrs {
		name := osRobotName(i)
		rig.names = append(rig.names, name)
		robots = append(robots, name+"="+addr)
		monitors = append(monitors, fmt.Sprintf("%s/%s=%s@%dms", name, osMonitor, osMonitorURL, osPeriodMS))
	}
	httpAddr := freePort(b)
	rig.metricsURL = "http://" + httpAddr + "/metrics"
	cmd := exec.Command(s.bin, "run")
	cmd.Env = append(os.Environ(),
		"NATS_URL="+s.natsURL,
		"CONNECTOR_SOURCES=openstream",
		"OPENSTREAM_ROBOTS="+strings.Join(robots, ","),
		"OPENSTREAM_MONITORS="+strings.Join(monitors, ","),
		"CONNECTOR_HTTP_ADDR="+httpAddr,
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
	)
	if control {
		cmd.Env = append(cmd.Env, "OPENSTREAM_CONTROL_ALLOW="+rig.names[0]+"=/project/robot/trajectory/*")
	}
	cmd.Env = append(cmd.Env, strings.Fields(os.Getenv("BENCH_CONNECTOR_ENV"))...)
	rig.conn = startChild(b, s.top.Cleanup, s.dir, "connector-os-"+label, cmd)
	rig.conn.role = "connector"
	err := waitFor(30*time.Second, func() error {
		select {
		case <-rig.conn.exited:
			return fmt.Errorf("connector exited: %v; see %s", rig.conn.waitErr, rig.conn.log.Name())
		default:
		}
		st, err := rig.simStats()
		if err != nil {
			return err
		}
		if st.Streaming < n {
			return fmt.Errorf("%d of %d robots streaming: %w", st.Streaming, n, errNotYet)
		}
		p, err := scrape(rig.metricsURL)
		if err != nil {
			return err
		}
		if got := p.sum("connector_published_total", `lane="low"`); got < float64(n) {
			return fmt.Errorf("%v data events stored: %w", got, errNotYet)
		}
		return nil
	})
	if err != nil {
		b.Fatalf("open stream rig %s did not start: %v (logs: %s, %s)", label, err, rig.conn.log.Name(), rig.sim.log.Name())
	}
	return rig
}

func (rig *osRig) simStats() (osSimStats, error) {
	var st osSimStats
	err := getJSON(rig.simControl+"/bench/stats", &st)
	return st, err
}

func (rig *osRig) stop() {
	rig.conn.stop()
	rig.sim.stop()
}

// osSample measures stream, the NATS server, this process, the rig (if any)
// and extra processes, like system.sample does for a LaserSell run.
func (s *system) osSample(stream string, rig *osRig, extra ...*child) (sample, osSimStats) {
	sa := sample{cpu: map[string]time.Duration{"nats": s.natsCPU()}}
	procs := extra
	var st osSimStats
	if rig != nil {
		procs = append(procs, rig.conn, rig.sim)
		p, err := scrape(rig.metricsURL)
		if err != nil {
			s.b.Fatal(err)
		}
		sa.prom = p
		if st, err = rig.simStats(); err != nil {
			s.b.Fatal(err)
		}
	}
	for _, c := range procs {
		sa.cpu[c.role] = c.cpu()
	}
	sa.self, sa.busy = selfCPU(), machineBusy()
	sa.stored, sa.storedBytes = s.streamState(stream)
	sa.at = time.Now()
	return sa, st
}

// --- data latency ---

// osLatency reads the data of some robots with a JetStream ordered consumer
// and keeps, while recording, the latency of every message: from the
// simulator's "ts" (Unix ms, taken when it builds the line, truncated to the
// millisecond) to the consumer's callback, split at the connector's
// Connector-Received header (nanoseconds) and at a core NATS subscription on
// the same subjects (when the server routed the connector's publish).
type osLatency struct {
	on   atomic.Bool
	mu   sync.Mutex
	recs []osLatRec
	core map[string]int64 // subject#Connector-Seq -> core delivery
	subs []*nats.Subscription
	cc   jetstream.ConsumeContext

	unparsed                  int
	total, read, toCore, toJS []float64 // µs, sorted by stop
	afterRead                 []float64 // µs: Connector-Received -> JetStream consumer
	coreMissing               int64
}

type osLatRec struct {
	key                string
	sentNs, connNs, at int64
}

func osLatKey(subject, seq string) string { return subject + "#" + seq }

func (s *system) osLatencyConsumer(robots []string) *osLatency {
	l := &osLatency{core: map[string]int64{}}
	filters := make([]string, len(robots))
	for i, r := range robots {
		filters[i] = subjects.OpenStreamData(r, osMonitor)
		sub, err := s.nc.Subscribe(filters[i], func(m *nats.Msg) {
			now := time.Now().UnixNano()
			if !l.on.Load() {
				return
			}
			k := osLatKey(m.Subject, m.Header.Get(subjects.HeaderSeq))
			l.mu.Lock()
			l.core[k] = now
			l.mu.Unlock()
		})
		if err != nil {
			s.b.Fatal(err)
		}
		l.subs = append(l.subs, sub)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := s.js.OrderedConsumer(ctx, osDataStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters, DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		s.b.Fatal(err)
	}
	l.cc, err = cons.Consume(func(m jetstream.Msg) {
		now := time.Now().UnixNano()
		if !l.on.Load() {
			return
		}
		ts, ok := dataTS(m.Data())
		h := m.Headers()
		conn, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderReceived))
		l.mu.Lock()
		defer l.mu.Unlock()
		if !ok || err != nil {
			l.unparsed++
			return
		}
		l.recs = append(l.recs, osLatRec{key: osLatKey(m.Subject(), h.Get(subjects.HeaderSeq)),
			sentNs: ts * int64(time.Millisecond), connNs: conn.UnixNano(), at: now})
	})
	if err != nil {
		s.b.Fatal(err)
	}
	return l
}

// stop ends the recording and computes the latencies.
func (l *osLatency) stop() {
	l.on.Store(false)
	l.cc.Stop()
	for _, sub := range l.subs {
		_ = sub.Unsubscribe()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		l.total = append(l.total, float64(r.at-r.sentNs)/1e3)
		l.read = append(l.read, float64(r.connNs-r.sentNs)/1e3)
		l.afterRead = append(l.afterRead, float64(r.at-r.connNs)/1e3)
		if c, ok := l.core[r.key]; ok {
			l.toCore = append(l.toCore, float64(c-r.connNs)/1e3)
			l.toJS = append(l.toJS, float64(r.at-c)/1e3)
		} else {
			l.coreMissing++
		}
	}
	for _, xs := range [][]float64{l.total, l.read, l.afterRead, l.toCore, l.toJS} {
		sort.Float64s(xs)
	}
}

// dataTS returns the "ts" field of a data line (`{"type":"data",...,"ts":N,`).
func dataTS(b []byte) (int64, bool) {
	i := bytes.Index(b, []byte(`"ts":`))
	if i < 0 {
		return 0, false
	}
	i += len(`"ts":`)
	j := i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	v, err := strconv.ParseInt(string(b[i:j]), 10, 64)
	return v, err == nil
}

// latencyRobots picks k robots spread evenly over n.
func latencyRobots(names []string, k int) []string {
	if len(names) <= k {
		return names
	}
	out := make([]string, k)
	for i := range out {
		out[i] = names[i*len(names)/k]
	}
	return out
}

// --- scale ---

// osScale is one step of the robot-count search.
type osScale struct {
	N                               int
	Nominal, Offered, Received      float64 // data events per second
	Stored, DroppedWin, DroppedRun  float64
	DepthEnd                        float64 // low-lane events still queued after the window
	Reconnects                      float64
	P50, P99, Max                   float64 // µs, sim ts (ms, truncated) -> consumer: an upper bound
	ReadP50, ReadP99                float64 // µs, sim ts -> Connector-Received (upper bound)
	AfterP50, AfterP99              float64 // µs, Connector-Received -> consumer (exact)
	PubP50, PubP99                  float64 // µs, Connector-Received -> core NATS delivery
	JSP50, JSP99                    float64 // µs, core NATS delivery -> JetStream consumer
	Samples, LatRobots, Unparsed    int
	Cores, CPUPerM, NATSCPUPerM     float64
	SimCores, SelfCores, OtherCores float64
	Busy                            float64 // machine, cores
	PayloadB, HeaderB               float64
	Raw, RawRobots                  osRawWindow
	Pass                            bool
	Rounds                          []osRoundFigures // every round of the step, by CPU ratio
}

// osRoundFigures are one round's figures, listed next to the median round.
type osRoundFigures struct {
	Ratio, Conn, Raw, P99, Drops float64
}

// osRawWindow is the raw publisher at the rate the connector stored.
type osRawWindow struct {
	Rate, Stored, CPUPerM, NATSCPUPerM, Cores, OtherCores float64
	Errors                                                float64
}

func (x osScale) cpuRatio() float64 {
	if x.Raw.CPUPerM == 0 {
		return 0
	}
	return x.CPUPerM / x.Raw.CPUPerM
}

// BenchmarkOpenStreamScale runs N simulated robots (one listener each), each
// with a 2 ms MONITOR of joint_states, through one connector process, for N
// in BENCH_OS_N (default 25,50,75,100). Each step measures drops, the data
// latency of 10 robots, and the connector's CPU per million stored events;
// then a raw nats.go publisher stores the same payloads at the same rate, in
// the same run, for the CPU ratio.
//
//	go test -run '^$' -bench OpenStream -benchtime 1x -timeout 10m ./bench/
func BenchmarkOpenStreamScale(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("needs /proc")
	}
	s := setupSystem(b)
	var steps []osScale
	cache := map[int]osScale{}
	defer func() { s.printOSScale(steps) }()
	for _, n := range osScaleNs() {
		b.Run("robots="+strconv.Itoa(n), func(sb *testing.B) {
			s.b = sb
			x, ok := cache[n]
			if !ok {
				x = s.osScaleStep(n)
				cache[n] = x
				steps = append(steps, x)
			}
			sb.ReportMetric(float64(x.N), "robots")
			sb.ReportMetric(x.Stored, "stored/s")
			sb.ReportMetric(x.DroppedRun, "drops")
			sb.ReportMetric(x.P99/1e3, "p99-ms")
			sb.ReportMetric(x.CPUPerM, "cpu-s/M")
			sb.ReportMetric(x.Raw.CPUPerM, "raw-cpu-s/M")
			sb.ReportMetric(x.cpuRatio(), "cpu-ratio")
		})
		s.b = b
	}
}

// osScaleStep runs osRounds rounds of N robots, each a connector window and
// then the raw publishers at the rate it stored, so slow changes of the
// machine's speed hit both sides of every round's ratio alike. The step's row
// is the round with the median CPU ratio; drops count over every round, and
// the step passes only when every round does.
func (s *system) osScaleStep(n int) osScale {
	var rounds []osScale
	for r := range osRounds {
		rounds = append(rounds, s.osScaleRound(n, r+1))
	}
	slices.SortFunc(rounds, func(a, b osScale) int { return cmp.Compare(a.cpuRatio(), b.cpuRatio()) })
	x := rounds[len(rounds)/2]
	x.Rounds, x.DroppedRun = nil, 0
	for _, r := range rounds {
		x.Rounds = append(x.Rounds, osRoundFigures{Ratio: r.cpuRatio(), Conn: r.CPUPerM, Raw: r.Raw.CPUPerM, P99: r.P99, Drops: r.DroppedRun})
		x.Pass = x.Pass && r.Pass
		x.DroppedRun += r.DroppedRun
	}
	return x
}

func (s *system) osScaleRound(n, round int) osScale {
	x := osScale{N: n, Nominal: float64(n) * 1000 / osPeriodMS}
	label := "n" + strconv.Itoa(n) + "-r" + strconv.Itoa(round)
	rig := s.startOSRig(n, label, false)
	s.purge(osDataStream)
	lr := latencyRobots(rig.names, osLatRobots)
	x.LatRobots = len(lr)
	lat := s.osLatencyConsumer(lr)
	time.Sleep(osWarmup)
	a, sa := s.osSample(osDataStream, rig)
	lat.on.Store(true)
	s.osPerf(rig, label)
	time.Sleep(osWindow)
	lat.on.Store(false)
	z, sz := s.osSample(osDataStream, rig)
	lat.stop()
	d := diff(a, z)

	x.Offered = float64(sz.DataLines-sa.DataLines) / d.secs
	x.Received = d.events / d.secs
	x.Stored = d.stored / d.secs
	x.DroppedWin = d.dropped
	x.DroppedRun = z.prom.sum("connector_lane_dropped_total")
	x.DepthEnd = z.prom.sum("connector_lane_depth", `lane="low"`)
	x.Reconnects = z.prom.sum("connector_upstream_reconnects_total")
	x.Cores = d.cpu["connector"] / d.secs
	x.CPUPerM = d.cpu["connector"] / d.stored * 1e6
	x.NATSCPUPerM = d.cpu["nats"] / d.stored * 1e6
	x.SimCores = d.cpu["sim"] / d.secs
	x.SelfCores = (z.self - a.self).Seconds() / d.secs
	x.OtherCores = d.other / d.secs
	x.Busy = d.busy / d.secs
	x.Samples, x.Unparsed = len(lat.total), lat.unparsed
	x.P50, x.P99, x.Max = pct(lat.total, 50), pct(lat.total, 99), pct(lat.total, 100)
	x.ReadP50, x.ReadP99 = pct(lat.read, 50), pct(lat.read, 99)
	x.AfterP50, x.AfterP99 = pct(lat.afterRead, 50), pct(lat.afterRead, 99)
	x.PubP50, x.PubP99 = pct(lat.toCore, 50), pct(lat.toCore, 99)
	x.JSP50, x.JSP99 = pct(lat.toJS, 50), pct(lat.toJS, 99)
	payloads := filepath.Join(s.dir, "os-payloads-"+label+".ndjson")
	x.PayloadB, x.HeaderB = s.capturePayloads(osDataStream, payloads)
	rig.stop()
	x.Pass = x.DroppedRun == 0 && x.P99 < float64(osLatTarget/time.Microsecond) && x.Offered >= 0.95*x.Nominal && x.Samples > 0

	x.Raw = s.osRawWindow(n, x.Stored, payloads, "burst")
	x.RawRobots = s.osRawWindow(n, x.Stored, payloads, "robots")
	s.b.Logf("robots=%d: offered %.0f/s stored %.0f/s drops %.0f p99 %.2f ms; connector %.2f CPU-s/M, raw %.2f CPU-s/M",
		n, x.Offered, x.Stored, x.DroppedRun, x.P99/1e3, x.CPUPerM, x.Raw.CPUPerM)
	return x
}

// osPerf records a CPU profile of the connector binary for the window when
// BENCH_PERF is set (perf(1) must be installed; the profile itself costs CPU,
// so figures from such a run are not reported).
func (s *system) osPerf(rig *osRig, label string) {
	if os.Getenv("BENCH_PERF") == "" {
		return
	}
	out, err := s.perfProcess(rig.conn, "connector-os-"+label, osWindow)
	if err != nil {
		s.b.Logf("perf: %v", err)
		return
	}
	s.b.Logf("perf profile of the connector (%s): %s", label, out)
}

// capturePayloads writes the newest data payloads of stream to path (one per
// line) and returns their mean payload and header size.
func (s *system) capturePayloads(stream, path string) (payloadB, headerB float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		s.b.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.b.Fatal(err)
	}
	var buf bytes.Buffer
	var n, hb int
	for seq := info.State.LastSeq; seq > 0 && seq > info.State.LastSeq-osPayloadCap; seq-- {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if bytes.IndexByte(m.Data, '\n') >= 0 {
			continue
		}
		buf.Write(m.Data)
		buf.WriteByte('\n')
		n++
		for k, vs := range m.Header {
			for _, v := range vs {
				hb += len(k) + len(v) + 4
			}
		}
	}
	if n == 0 {
		s.b.Fatalf("no data payloads in %s", stream)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		s.b.Fatal(err)
	}
	return float64(buf.Len()-n) / float64(n), float64(hb) / float64(n)
}

// osRawWindow has plain nats.go async publishing store the captured payloads
// at rate over n subjects, in its own process, and measures it like the
// connector.
func (s *system) osRawWindow(n int, rate float64, payloads, mode string) osRawWindow {
	s.purge(osRawStream.Name)
	env := []string{"BENCH_RAW_MODE=" + mode, "BENCH_NATS_URL=" + s.natsURL, "BENCH_WINDOW=" + strconv.Itoa(publishWindow),
		"BENCH_RATE=" + strconv.FormatFloat(rate, 'f', 0, 64), "BENCH_SUBJECTS=" + strconv.Itoa(n), "BENCH_PAYLOADS=" + payloads}
	raw := startRole(s.b, s.top.Cleanup, s.dir, "os-raw-"+mode, roleOSRaw, env, nil, nil)
	raw.role = "raw"
	time.Sleep(osWarmup)
	a, _ := s.osSample(osRawStream.Name, nil, raw)
	time.Sleep(osWindow)
	z, _ := s.osSample(osRawStream.Name, nil, raw)
	raw.stop()
	var rr osRawResult
	select {
	case line := <-raw.resultC:
		_ = json.Unmarshal(line, &rr)
	default:
		s.b.Fatalf("raw publisher printed no result; see %s", raw.log.Name())
	}
	d := diff(a, z)
	return osRawWindow{
		Rate: rate, Stored: d.stored / d.secs,
		CPUPerM: d.cpu["raw"] / d.stored * 1e6, NATSCPUPerM: d.cpu["nats"] / d.stored * 1e6,
		Cores: d.cpu["raw"] / d.secs, OtherCores: d.other / d.secs, Errors: float64(rr.Errors),
	}
}

func (s *system) printOSScale(steps []osScale) {
	if len(steps) == 0 {
		return
	}
	var w strings.Builder
	row := func(cells ...string) { fmt.Fprintf(&w, "| %s |\n", strings.Join(cells, " | ")) }
	header := func(cells ...string) {
		row(cells...)
		fmt.Fprintf(&w, "|%s\n", strings.Repeat("---|", len(cells)))
	}
	f := func(format string, args ...any) string { return fmt.Sprintf(format, args...) }
	fmt.Fprintf(&w, "\n## Open Stream scale: N robots x 500 data events/s through one connector (each step %s after %s warm-up; latency from %d robots)\n\n", osWindow, osWarmup, osLatRobots)
	header("robots", "nominal/s", "sim sent/s", "received/s", "stored/s", "drops (window / run)", "queued after", "reconnects",
		"p50 ms", "p99 ms", "max ms", "sim -> read p50 / p99 ms", "read -> NATS p50 / p99 ms", "NATS -> consumer p50 / p99 ms", "samples",
		"machine busy, cores (other load)", "pass")
	best := 0
	for _, x := range steps {
		row(f("%d", x.N), f("%.0f", x.Nominal), f("%.0f", x.Offered), f("%.0f", x.Received), f("%.0f", x.Stored),
			f("%.0f / %.0f", x.DroppedWin, x.DroppedRun), f("%.0f", x.DepthEnd), f("%.0f", x.Reconnects),
			f("%.2f", x.P50/1e3), f("**%.2f**", x.P99/1e3), f("%.2f", x.Max/1e3), f("%.2f / %.2f", x.ReadP50/1e3, x.ReadP99/1e3),
			f("%.2f / %.2f", x.PubP50/1e3, x.PubP99/1e3), f("%.2f / %.2f", x.JSP50/1e3, x.JSP99/1e3), f("%d", x.Samples),
			f("%.2f (%.2f)", x.Busy, x.OtherCores), passFail(x.Pass))
		if x.Pass && x.N > best {
			best = x.N
		}
	}
	fmt.Fprintf(&w, "\nCPU per million stored data events, same window; raw publishers right after, at the rate the connector stored:\n\n")
	header("robots", "stored/s", "connector cores", "connector CPU-s/M (+ nats)", "raw, bursts every 2 ms: CPU-s/M (+ nats)", "ratio",
		"raw, one ticker per robot: CPU-s/M (+ nats)", "ratio", "sim cores", "bench cores", "other load (connector / raw / raw per robot)")
	for _, x := range steps {
		row(f("%d", x.N), f("%.0f", x.Stored), f("%.2f", x.Cores), f("%.2f + %.2f", x.CPUPerM, x.NATSCPUPerM),
			f("%.2f + %.2f", x.Raw.CPUPerM, x.Raw.NATSCPUPerM), f("**%.2f**", x.cpuRatio()),
			f("%.2f + %.2f", x.RawRobots.CPUPerM, x.RawRobots.NATSCPUPerM), f("%.2f", x.CPUPerM/x.RawRobots.CPUPerM),
			f("%.2f", x.SimCores), f("%.2f", x.SelfCores), f("%.2f / %.2f / %.2f", x.OtherCores, x.Raw.OtherCores, x.RawRobots.OtherCores))
	}
	fmt.Fprintf(&w, "\nevery round (connector window, then the raw publishers; the rows above are the median round by CPU ratio):\n\n")
	header("robots", "ratios to raw bursts", "connector CPU-s/M", "raw bursts CPU-s/M", "p99 ms", "drops")
	for _, x := range steps {
		var ratio, conn, raw, p99, drops []string
		for _, r := range x.Rounds {
			ratio, conn, raw = append(ratio, f("%.2f", r.Ratio)), append(conn, f("%.2f", r.Conn)), append(raw, f("%.2f", r.Raw))
			p99, drops = append(p99, f("%.1f", r.P99/1e3)), append(drops, f("%.0f", r.Drops))
		}
		row(f("%d", x.N), strings.Join(ratio, ", "), strings.Join(conn, ", "), strings.Join(raw, ", "), strings.Join(p99, ", "), strings.Join(drops, ", "))
	}
	x := steps[0]
	fmt.Fprintf(&w, "\npayload %.0f B + %.0f B of headers per data event (connector). Latency starts at the simulator's \"ts\" (Unix ms, truncated): every figure from it is an upper bound, at most 1 ms above the true value; the split at Connector-Received and at a core NATS subscription is in ns.\n", x.PayloadB, x.HeaderB)
	fmt.Fprintf(&w, "largest N passing (no drops, p99 < %s, sim sent >= 95%% of nominal): %d (target >= 50: %s)\n", osLatTarget, best, passFail(best >= 50))
	var out resultLines
	out.add("openstream_largest_n", float64(best))
	for _, x := range steps {
		if x.N == 50 {
			fmt.Fprintf(&w, "N=50: connector %.2f CPU-s/M, raw %.2f CPU-s/M, ratio %.2f, the median of %d rounds (target <= 1.5: %s)\n", x.CPUPerM, x.Raw.CPUPerM, x.cpuRatio(), len(x.Rounds), passFail(x.cpuRatio() <= 1.5))
		}
		n := "openstream_n" + strconv.Itoa(x.N) + "_"
		out.add(n+"stored_per_s", x.Stored)
		out.add(n+"drops", x.DroppedWin)
		out.add(n+"p99_ms", x.P99/1e3)
		out.add(n+"connector_cpu_s_per_m", x.CPUPerM)
		out.add(n+"raw_cpu_s_per_m", x.Raw.CPUPerM)
		out.add(n+"connector_vs_raw_cpu", x.cpuRatio())
	}
	w.WriteString("\n")
	out.writeTo(&w)
	fmt.Print(w.String())
	_ = os.WriteFile(filepath.Join(s.dir, "openstream-scale.md"), []byte(w.String()), 0o644)
}

// --- CONTROL latency ---

// osCtlCase is one CONTROL forwarding window.
type osCtlCase struct {
	Name                    string
	Robots                  int
	Hz                      float64
	Window                  time.Duration
	Sent, Matched, Failed   int
	Reordered, Refused      int
	P50, P99, Max           float64 // µs, NATS publish -> simulator handled the line
	PubP50, PubP99          float64 // µs, publish -> connector command handler (audit "received")
	FwdP50, FwdP99          float64 // µs, handler -> simulator
	DataStored, DataDropped float64
	BusyCores, OtherCores   float64
}

// BenchmarkOpenStreamControl measures CONTROL forwarding: plain publishes on
// openstream.r001.cmd.control (no reply subject) at 100 and 500 Hz, each
// carrying a unique trajectory point, while a 2 ms MONITOR streams on the same
// robot; latency runs from the publish to the simulator's receive time of that
// line (sim.Server.Received). A last case repeats 500 Hz with
// BENCH_OS_CONTROL_LOADED (default 50) robots streaming through the same
// connector (0 skips it).
func BenchmarkOpenStreamControl(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("needs /proc")
	}
	s := setupSystem(b)
	var cases []osCtlCase
	cache := map[string]osCtlCase{}
	defer func() { s.printOSControl(cases) }()
	loaded := 50
	if v, err := strconv.Atoi(os.Getenv("BENCH_OS_CONTROL_LOADED")); err == nil {
		loaded = v
	}
	var rig *osRig
	seq := int64(1000)
	run := func(name string, robots int, hz float64, window time.Duration) {
		b.Run(name, func(sb *testing.B) {
			s.b = sb
			c, ok := cache[name]
			if !ok {
				if rig == nil || rig.n != robots {
					if rig != nil {
						rig.stop()
					}
					rig = s.startOSRig(robots, "control-"+strconv.Itoa(robots), true)
					s.osControlReady(rig)
				}
				c = s.osControlWindow(rig, name, hz, window, seq)
				seq += int64(hz*(window+osCtlWarmup).Seconds()) + 1000
				cache[name] = c
				cases = append(cases, c)
			}
			sb.ReportMetric(c.P50, "p50-µs")
			sb.ReportMetric(c.P99, "p99-µs")
			sb.ReportMetric(float64(c.Sent-c.Matched), "lost")
		})
		s.b = b
	}
	// 100 Hz gets a longer window, so that each p99 rests on 800 or more CONTROLs.
	run("1-robot/100Hz", 1, 100, 2*osCtlWindow)
	run("1-robot/500Hz", 1, 500, osCtlWindow)
	if loaded > 1 {
		run(strconv.Itoa(loaded)+"-robots/500Hz", loaded, 500, osCtlWindow)
	}
	if rig != nil {
		rig.stop()
	}
}

func osControlBody(seq int64, interval float64) []byte {
	return fmt.Appendf(nil, `{"url":%q,"method":"POST","body":{"interval":%g,"time_from_start":-1,"look_ahead_time":0.004,"point":[%s,90,0,0,-90,0]}}`,
		osControlURL, interval, strconv.FormatFloat(float64(seq)/1000, 'f', 3, 64))
}

// osControlReady waits until a request/reply CONTROL on r001 succeeds.
func (s *system) osControlReady(rig *osRig) {
	subject := subjects.Command(subjects.KindOpenStream, rig.names[0], "control")
	err := waitFor(20*time.Second, func() error {
		m, err := s.nc.Request(subject, osControlBody(0, 0.002), 5*time.Second)
		if err != nil {
			return err
		}
		var r struct {
			OK bool `json:"ok"`
		}
		if json.Unmarshal(m.Data, &r) != nil || !r.OK {
			return fmt.Errorf("control: %s", m.Data)
		}
		return nil
	})
	if err != nil {
		s.b.Fatalf("CONTROL never succeeded: %v", err)
	}
}

// osControlWindow publishes CONTROLs at hz for osCtlWarmup+window and
// measures those of the window.
func (s *system) osControlWindow(rig *osRig, name string, hz float64, window time.Duration, seq0 int64) osCtlCase {
	b := s.b
	robot := rig.names[0]
	c := osCtlCase{Name: name, Robots: rig.n, Hz: hz, Window: window}
	// The audit record of each CONTROL carries when the connector's handler got it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cons, err := s.js.OrderedConsumer(ctx, subjects.StreamAudit, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.Audit(subjects.KindOpenStream, robot, "control")},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	var amu sync.Mutex
	handled := map[int64]int64{}
	refused := 0
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var rec struct {
			Received string          `json:"received"`
			Request  json.RawMessage `json:"request"`
			Reply    struct {
				OK bool `json:"ok"`
			} `json:"reply"`
		}
		if json.Unmarshal(m.Data(), &rec) != nil {
			return
		}
		t, err := time.Parse(time.RFC3339Nano, rec.Received)
		seq, ok := controlSeq(append(append([]byte(`{"payload":`), rec.Request...), '}'))
		amu.Lock()
		defer amu.Unlock()
		if !rec.Reply.OK {
			refused++
		}
		if err == nil && ok {
			handled[seq] = t.UnixNano()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()

	subject := subjects.Command(subjects.KindOpenStream, robot, "control")
	period := time.Duration(float64(time.Second) / hz)
	total := int((osCtlWarmup + window) / period)
	warm := int(osCtlWarmup / period)
	pub := make([]int64, total)
	a, _ := s.osSample(osDataStream, rig)
	start := time.Now()
	for i := range total {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		body := osControlBody(seq0+int64(i), period.Seconds())
		pub[i] = time.Now().UnixNano()
		if err := s.nc.Publish(subject, body); err != nil {
			b.Fatal(err)
		}
	}
	z, _ := s.osSample(osDataStream, rig)
	d := diff(a, z)
	c.DataStored, c.DataDropped = d.stored/d.secs, d.dropped
	c.BusyCores, c.OtherCores = d.busy/d.secs, d.other/d.secs

	// Every CONTROL of the window must reach the simulator, in order.
	var recv []osControlRecv
	_ = waitFor(5*time.Second, func() error {
		recv = nil
		if err := getJSON(rig.simControl+"/bench/controls?robot=0", &recv); err != nil {
			return err
		}
		n := 0
		for _, r := range recv {
			if r.Seq >= seq0 && r.Seq < seq0+int64(total) {
				n++
			}
		}
		if n < total {
			return errNotYet
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // audit records of the last ones
	var lat, pubLat, fwdLat []float64
	last := int64(-1)
	for _, r := range recv {
		i := r.Seq - seq0
		if i < 0 || i >= int64(total) {
			continue
		}
		if r.Seq <= last {
			c.Reordered++
		}
		last = r.Seq
		if r.Err != "" {
			c.Failed++
		}
		if i < int64(warm) {
			continue
		}
		c.Matched++
		lat = append(lat, float64(r.At-pub[i])/1e3)
		amu.Lock()
		h, ok := handled[r.Seq]
		amu.Unlock()
		if ok {
			pubLat = append(pubLat, float64(h-pub[i])/1e3)
			fwdLat = append(fwdLat, float64(r.At-h)/1e3)
		}
	}
	c.Sent = total - warm
	amu.Lock()
	c.Refused = refused
	amu.Unlock()
	for _, xs := range [][]float64{lat, pubLat, fwdLat} {
		sort.Float64s(xs)
	}
	c.P50, c.P99, c.Max = pct(lat, 50), pct(lat, 99), pct(lat, 100)
	c.PubP50, c.PubP99 = pct(pubLat, 50), pct(pubLat, 99)
	c.FwdP50, c.FwdP99 = pct(fwdLat, 50), pct(fwdLat, 99)
	b.Logf("%s: %d sent, %d received, p50 %.0f µs, p99 %.0f µs", name, c.Sent, c.Matched, c.P50, c.P99)
	return c
}

func (s *system) printOSControl(cases []osCtlCase) {
	if len(cases) == 0 {
		return
	}
	var w strings.Builder
	row := func(cells ...string) { fmt.Fprintf(&w, "| %s |\n", strings.Join(cells, " | ")) }
	f := func(format string, args ...any) string { return fmt.Sprintf(format, args...) }
	fmt.Fprintf(&w, "\n## Open Stream CONTROL forwarding (plain publishes, no reply; a 2 ms MONITOR on every robot; %s warm-up per case)\n\n", osCtlWarmup)
	cols := []string{"case", "robots streaming", "CONTROL/s", "window", "sent", "received", "control_err", "reordered", "refused",
		"p50 µs", "p99 µs", "max µs", "publish -> handler p50 / p99 µs", "handler -> sim p50 / p99 µs", "data stored/s", "data drops",
		"machine busy, cores (other load)"}
	row(cols...)
	fmt.Fprintf(&w, "|%s\n", strings.Repeat("---|", len(cols)))
	for _, c := range cases {
		row(c.Name, f("%d", c.Robots), f("%.0f", c.Hz), c.Window.String(), f("%d", c.Sent), f("%d", c.Matched), f("%d", c.Failed),
			f("%d", c.Reordered), f("%d", c.Refused), f("%.0f", c.P50), f("**%.0f**", c.P99), f("%.0f", c.Max),
			f("%.0f / %.0f", c.PubP50, c.PubP99), f("%.0f / %.0f", c.FwdP50, c.FwdP99), f("%.0f", c.DataStored), f("%.0f", c.DataDropped),
			f("%.2f (%.2f)", c.BusyCores, c.OtherCores))
	}
	fmt.Fprintln(&w)
	for _, c := range cases {
		if c.Robots == 1 {
			fmt.Fprintf(&w, "%s: p99 %.0f µs, all received in order: %v (target p99 < %s: %s)\n", c.Name, c.P99, c.Matched == c.Sent && c.Reordered == 0,
				osCtlTarget, passFail(c.P99 < float64(osCtlTarget/time.Microsecond) && c.Matched == c.Sent))
		}
	}
	fmt.Print(w.String())
	_ = os.WriteFile(filepath.Join(s.dir, "openstream-control.md"), []byte(w.String()), 0o644)
}
