package bench

// Issue 12, "Faster than hand-written glue": the connector against the raw
// per-message publisher with a window of 4096 and against the glue
// (glue_test.go), in the same interleaved rounds as the other throughput
// windows; the connector held at 80 % of its own maximum for BENCH_SUSTAIN;
// and the publish window and low-lane size as knobs. BENCHMARKS.md, section
// "Faster than glue (issue 12)", explains the figures.

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	// overOffer: the connector is offered this multiple of the rate the
	// raw-4096 publisher stored just before, so it runs at its own maximum
	// (dropping the oldest PnL) and a connector faster than raw can show it.
	// More would measure the cost of dropping rather than of publishing.
	overOffer = 1.2
	// glueOffer is the same for the glue, which never drops: what it cannot
	// take backs up the simulator's socket, so offering more costs it
	// nothing, and 1.2 capped it in a loaded run (it stored all it was offered).
	glueOffer = 2.0
	// sustainDefault is the sustain case's length unless BENCH_SUSTAIN says
	// otherwise (0 skips it); sustainSlice is how often drops are sampled.
	sustainDefault = 60 * time.Second
	sustainSlice   = 5 * time.Second
	// knobLaneFor sizes the low lane of the last knob variant: this long at
	// 80 % of the connector's maximum stored rate.
	knobLaneFor = 250 * time.Millisecond
)

// startGlue starts a simulator and the glue on it, and waits until the
// snapshot (hello_ok, a balance_update and a position_opened per position)
// is stored.
func (s *system) startGlue(session string) *run {
	rn := &run{session: session}
	simURL := s.startSim(rn)
	var gr struct{ Metrics string }
	rn.conn = startRole(s.b, s.top.Cleanup, s.dir, "glue-"+session, "glue", []string{
		"BENCH_NATS_URL=" + s.natsURL, "BENCH_GLUE_URL=" + simURL, "BENCH_GLUE_SESSION=" + session,
		"BENCH_WINDOW=" + strconv.Itoa(glueWindow),
	}, nil, &gr)
	rn.metricsURL = gr.Metrics
	want := float64(1 + 2*autoPositions)
	err := waitFor(20*time.Second, func() error {
		p, err := scrape(rn.metricsURL)
		if err != nil {
			return err
		}
		if got := p.sum("glue_acked_total"); got < want {
			return fmt.Errorf("%v of %v snapshot frames stored: %w", got, want, errNotYet)
		}
		return nil
	})
	if err != nil {
		s.b.Fatalf("glue did not start: %v (logs: %s)", err, rn.conn.log.Name())
	}
	return rn
}

// versusRound is one round's issue-12 windows; connMaxB is the connector
// with BENCH_CONNECTOR_ENV_B (an A/B of a setting), when given.
type versusRound struct{ raw4096, glue, connMax, connMaxB tput }

// versusWindows runs raw-4096, then the glue (offered glueOffer times what
// raw stored) and the connector (overOffer times), alternating which of the
// two goes first.
func (s *system) versusWindows(conn, glue *run, i int) versusRound {
	v := versusRound{raw4096: s.rawWindow(glueWindow, false)}
	n := strconv.Itoa(i + 1)
	if s.envB != nil && i%2 == 1 { // B first in every other round: no place favours it
		v.connMaxB = s.connWindow(s.envB, "max-b-"+n, overOffer*v.raw4096.Stored)
	}
	if i%2 == 0 {
		v.glue = s.connWindow(glue, "glue-"+n, glueOffer*v.raw4096.Stored)
		v.connMax = s.connWindow(conn, "max-"+n, overOffer*v.raw4096.Stored)
	} else {
		v.connMax = s.connWindow(conn, "max-"+n, overOffer*v.raw4096.Stored)
		v.glue = s.connWindow(glue, "glue-"+n, glueOffer*v.raw4096.Stored)
	}
	if s.envB != nil && i%2 == 0 {
		v.connMaxB = s.connWindow(s.envB, "max-b-"+n, overOffer*v.raw4096.Stored)
	}
	return v
}

// median of xs (the middle one; the upper middle for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = append([]float64(nil), xs...)
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

// versusMedians are the medians over rounds of the issue-12 figures; ratios
// are medians of the per-round ratios.
func (r *results) versusMedians() map[string]float64 {
	med := func(f func(versusRound) float64) float64 {
		xs := make([]float64, 0, len(r.rounds))
		for _, x := range r.rounds {
			xs = append(xs, f(x.versus))
		}
		return median(xs)
	}
	raw := func(v versusRound) tput { return v.raw4096 }
	glue := func(v versusRound) tput { return v.glue }
	conn := func(v versusRound) tput { return v.connMax }
	stored := func(t tput) float64 { return t.Stored }
	cpu := func(t tput) float64 { return t.CPUPerM }
	m := map[string]float64{}
	for name, side := range map[string]func(versusRound) tput{"raw4096": raw, "glue": glue, "conn-max": conn} {
		m[name+"-msgs/s"] = med(func(v versusRound) float64 { return side(v).Stored })
		m[name+"-cpu-s/M"] = med(func(v versusRound) float64 { return side(v).CPUPerM })
		m[name+"-nats-cpu-s/M"] = med(func(v versusRound) float64 { return side(v).NATSCPUPerM })
	}
	ratio := func(num, den func(versusRound) tput, f func(tput) float64) float64 {
		return med(func(v versusRound) float64 { return f(num(v)) / f(den(v)) })
	}
	m["conn-vs-raw4096"], m["conn-vs-glue"], m["glue-vs-raw4096"] = ratio(conn, raw, stored), ratio(conn, glue, stored), ratio(glue, raw, stored)
	m["conn-vs-raw4096-cpu"], m["conn-vs-glue-cpu"], m["glue-vs-raw4096-cpu"] = ratio(conn, raw, cpu), ratio(conn, glue, cpu), ratio(glue, raw, cpu)
	m["conn-max-received/s"] = med(func(v versusRound) float64 { return v.connMax.Received })
	m["conn-max-dropped/s"] = med(func(v versusRound) float64 { return v.connMax.Dropped })
	m["glue-failed"] = med(func(v versusRound) float64 { return v.glue.Errors })
	if len(r.rounds) > 0 && r.rounds[0].versus.connMaxB.Offered > 0 {
		b := func(v versusRound) tput { return v.connMaxB }
		m["conn-b-msgs/s"] = med(func(v versusRound) float64 { return v.connMaxB.Stored })
		m["conn-b-cpu-s/M"] = med(func(v versusRound) float64 { return v.connMaxB.CPUPerM })
		m["conn-b-nats-cpu-s/M"] = med(func(v versusRound) float64 { return v.connMaxB.NATSCPUPerM })
		m["conn-b-vs-raw4096"], m["conn-b-vs-conn"] = ratio(b, raw, stored), ratio(b, conn, stored)
		m["conn-b-vs-raw4096-cpu"], m["conn-b-vs-conn-cpu"] = ratio(b, raw, cpu), ratio(b, conn, cpu)
	}
	return m
}

// sustainResult is one long window at a fixed PnL rate.
type sustainResult struct {
	Label                                  string
	Secs, Offered, Received, Stored, Drops float64
	CPUPerM, Cores, OtherCores             float64
	Slices, SlicesWithDrops                int
	// RoleCores is the CPU of the NATS server, the connector and its
	// simulator meanwhile, by role; the idle connectors and simulators of
	// the earlier phases count in OtherCores.
	RoleCores map[string]float64
}

func (x sustainResult) metrics() map[string]float64 {
	return map[string]float64{"offered/s": x.Offered, "msgs/s": x.Stored, "drops": x.Drops, "cpu-s/M": x.CPUPerM, "secs": x.Secs}
}

// sustainDuration is BENCH_SUSTAIN (a Go duration; 0 skips the case), else
// sustainDefault.
func sustainDuration() (time.Duration, error) {
	v := os.Getenv("BENCH_SUSTAIN")
	if v == "" {
		return sustainDefault, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("BENCH_SUSTAIN=%q: %w", v, err)
	}
	return d, nil
}

// sustain offers rn rate PnL/s for BENCH_SUSTAIN after a warm-up and counts
// the low-lane drops, also per sustainSlice, to tell one burst from a steady
// leak.
func (s *system) sustain(rn *run, label string, rate float64) sustainResult {
	x := sustainResult{Label: label, Offered: rate}
	window, err := sustainDuration()
	if err != nil {
		s.b.Fatal(err)
	}
	if window <= 0 || rn == nil || rate <= 0 {
		return x
	}
	s.purge("LASERSELL_PNL")
	rn.setPnL(s.b, rate)
	time.Sleep(tputWarmup)
	a := s.sample("LASERSELL_PNL", rn)
	prev := a
	for end := a.at.Add(window); time.Now().Before(end); {
		time.Sleep(min(sustainSlice, time.Until(end)))
		cur := s.sample("LASERSELL_PNL", rn)
		sd := diff(prev, cur)
		if sd.dropped > 0 {
			x.SlicesWithDrops++
		}
		// One note per slice: a burst of drops next to a dip of the stored
		// rate tells a stall from a steady shortfall.
		s.results.note("sustain %s slice %d: stored %.0f/s, received %.0f/s, dropped %.0f, connector %.2f cores, other %.2f cores",
			label, x.Slices+1, sd.stored/sd.secs, sd.events/sd.secs, sd.dropped, sd.cpu[rn.conn.role]/sd.secs, sd.other/sd.secs)
		x.Slices++
		prev = cur
	}
	rn.setPnL(s.b, 0)
	d := diff(a, prev)
	time.Sleep(500 * time.Millisecond)
	x.Secs, x.Drops = d.secs, d.dropped
	x.Received, x.Stored = d.events/d.secs, d.stored/d.secs
	x.CPUPerM = d.cpu[rn.conn.role] / d.stored * 1e6
	x.Cores, x.OtherCores = d.cpu[rn.conn.role]/d.secs, d.other/d.secs
	x.RoleCores = map[string]float64{}
	for role, secs := range d.cpu {
		x.RoleCores[role] = secs / d.secs
	}
	return x
}

// knobVariant is one connector configuration of the knob rounds, set
// explicitly, so the rows keep their meaning when the defaults change.
type knobVariant struct {
	name string
	env  []string
}

// knobVariants: the defaults until 05e98b8 (window 512, low lane 1024), the
// window of 4096 alone, and with a low lane of lane events.
func knobVariants(lane int) []knobVariant {
	return []knobVariant{
		{"w512-l1024", []string{"CONNECTOR_PUBLISH_WINDOW=512", "LASERSELL_LOW_LANE=1024"}},
		{"w4096-l1024", []string{"CONNECTOR_PUBLISH_WINDOW=4096", "LASERSELL_LOW_LANE=1024"}},
		{"w4096-l250ms", []string{"CONNECTOR_PUBLISH_WINDOW=4096", "LASERSELL_LOW_LANE=" + strconv.Itoa(lane)}},
	}
}

// knobRound is raw-4096 and every knob variant, each offered overOffer times
// what raw stored.
type knobRound struct {
	raw4096 tput
	conn    map[string]tput
}

// knobRounds starts a connector per knob variant, runs tputRounds
// interleaved rounds of raw-4096 and the variants (their order rotating per
// round), then the sustain case for the lane-sized variant at 80 % of its
// own maximum.
func (s *system) knobRounds() map[string]float64 {
	res := s.results
	conn := res.versusMedians()["conn-max-msgs/s"]
	if conn == 0 {
		return nil
	}
	res.knobLane = max(int(math.Ceil(knobLaneFor.Seconds()*0.8*conn)), 1)
	variants := knobVariants(res.knobLane)
	runs := map[string]*run{}
	for _, v := range variants {
		rn := s.startRun(v.name, false, v.env...)
		defer rn.stop()
		runs[v.name] = rn
	}
	for i := range tputRounds {
		k := knobRound{raw4096: s.rawWindow(glueWindow, false), conn: map[string]tput{}}
		offered := overOffer * k.raw4096.Stored
		for j := range variants {
			v := variants[(i+j)%len(variants)]
			k.conn[v.name] = s.connWindow(runs[v.name], "knob-"+v.name+"-"+strconv.Itoa(i+1), offered)
		}
		res.knobs = append(res.knobs, k)
	}
	m := res.knobMedians()
	last := variants[len(variants)-1].name
	res.knobSustain = s.sustain(runs[last], last, 0.8*m[last+"-msgs/s"])
	return m
}

func (r *results) knobMedians() map[string]float64 {
	m := map[string]float64{}
	med := func(f func(knobRound) float64) float64 {
		xs := make([]float64, 0, len(r.knobs))
		for _, k := range r.knobs {
			xs = append(xs, f(k))
		}
		return median(xs)
	}
	m["raw4096-msgs/s"] = med(func(k knobRound) float64 { return k.raw4096.Stored })
	m["raw4096-cpu-s/M"] = med(func(k knobRound) float64 { return k.raw4096.CPUPerM })
	for _, kv := range knobVariants(r.knobLane) {
		v := kv.name
		m[v+"-msgs/s"] = med(func(k knobRound) float64 { return k.conn[v].Stored })
		m[v+"-vs-raw4096"] = med(func(k knobRound) float64 { return k.conn[v].Stored / k.raw4096.Stored })
		m[v+"-cpu-s/M"] = med(func(k knobRound) float64 { return k.conn[v].CPUPerM })
		m[v+"-cpu-vs-raw4096"] = med(func(k knobRound) float64 { return k.conn[v].CPUPerM / k.raw4096.CPUPerM })
		m[v+"-dropped/s"] = med(func(k knobRound) float64 { return k.conn[v].Dropped })
	}
	return m
}

// printVersus writes issue 12's tables and returns every figure of the run
// as RESULT lines (the earlier targets' figures too).
func (s *system) printVersus(w *strings.Builder) resultLines {
	r := s.results
	var out resultLines
	if len(r.rounds) > 0 {
		m := r.cache["rounds"]
		out.add("raw512_stored_per_s", m["raw-msgs/s"])
		out.add("connector_matched_stored_per_s", m["conn-msgs/s"])
		out.add("connector_matched_vs_raw512", m["ratio"])
		out.add("raw512_cpu_s_per_m", m["raw-cpu-s/M"])
		out.add("connector_matched_cpu_s_per_m", m["conn-cpu-s/M"])
		out.add("raw512_headers_vs_raw512", m["hdr-ratio"])
	}
	if o := r.overload; o.Offered > 0 {
		out.add("connector_overload_stored_per_s", o.Stored)
	}
	if r.sustained > 0 {
		out.add("sustained_rate_per_s", r.sustained)
	}

	if len(r.rounds) > 0 {
		fmt.Fprintf(w, "\n## Faster than glue (issue 12): %d rounds of raw (window %d), then the glue offered %.1f x and the connector %.1f x what raw stored (their order alternating)\n\n",
			len(r.rounds), glueWindow, glueOffer, overOffer)
		fmt.Fprintf(w, "| round | raw-4096 stored/s | raw-4096 CPU-s/M (+ nats) | glue offered/s | glue stored/s | glue CPU-s/M (+ nats) | glue failed | connector offered/s | received/s | dropped/s | stored/s | connector CPU-s/M (+ nats) | connector / raw | connector / glue | glue / raw | other load, cores (raw / glue / connector) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for i, x := range r.rounds {
			v := x.versus
			fmt.Fprintf(w, "| %d | %.0f | %.2f + %.2f | %.0f | %.0f | %.2f + %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f + %.2f | %.2f | %.2f | %.2f | %.2f / %.2f / %.2f |\n",
				i+1, v.raw4096.Stored, v.raw4096.CPUPerM, v.raw4096.NATSCPUPerM, v.glue.Offered, v.glue.Stored, v.glue.CPUPerM, v.glue.NATSCPUPerM, v.glue.Errors,
				v.connMax.Offered, v.connMax.Received, v.connMax.Dropped, v.connMax.Stored, v.connMax.CPUPerM, v.connMax.NATSCPUPerM,
				v.connMax.Stored/v.raw4096.Stored, v.connMax.Stored/v.glue.Stored, v.glue.Stored/v.raw4096.Stored,
				v.raw4096.OtherCores, v.glue.OtherCores, v.connMax.OtherCores)
		}
		m := r.versusMedians()
		for _, k := range []struct{ name, key string }{
			{"raw4096_stored_per_s", "raw4096-msgs/s"}, {"glue_stored_per_s", "glue-msgs/s"}, {"connector_stored_per_s", "conn-max-msgs/s"},
			{"connector_received_per_s", "conn-max-received/s"}, {"connector_dropped_per_s", "conn-max-dropped/s"},
			{"connector_vs_raw4096_stored", "conn-vs-raw4096"}, {"connector_vs_glue_stored", "conn-vs-glue"}, {"glue_vs_raw4096_stored", "glue-vs-raw4096"},
			{"raw4096_cpu_s_per_m", "raw4096-cpu-s/M"}, {"glue_cpu_s_per_m", "glue-cpu-s/M"}, {"connector_cpu_s_per_m", "conn-max-cpu-s/M"},
			{"raw4096_nats_cpu_s_per_m", "raw4096-nats-cpu-s/M"}, {"glue_nats_cpu_s_per_m", "glue-nats-cpu-s/M"}, {"connector_nats_cpu_s_per_m", "conn-max-nats-cpu-s/M"},
			{"connector_vs_raw4096_cpu", "conn-vs-raw4096-cpu"}, {"glue_vs_raw4096_cpu", "glue-vs-raw4096-cpu"}, {"connector_vs_glue_cpu", "conn-vs-glue-cpu"},
			{"glue_failed_publishes", "glue-failed"},
			{"connector_b_stored_per_s", "conn-b-msgs/s"}, {"connector_b_cpu_s_per_m", "conn-b-cpu-s/M"}, {"connector_b_nats_cpu_s_per_m", "conn-b-nats-cpu-s/M"},
			{"connector_b_vs_raw4096_stored", "conn-b-vs-raw4096"}, {"connector_b_vs_connector_stored", "conn-b-vs-conn"},
			{"connector_b_vs_raw4096_cpu", "conn-b-vs-raw4096-cpu"}, {"connector_b_vs_connector_cpu", "conn-b-vs-conn-cpu"},
		} {
			if v, ok := m[k.key]; ok {
				out.add(k.name, v)
			}
		}
		if _, ok := m["conn-b-msgs/s"]; ok {
			fmt.Fprintf(w, "\nA/B, the connector (BENCH_CONNECTOR_BIN_B=%q) with BENCH_CONNECTOR_ENV_B=%q in the same rounds (offered as the connector):\n\n| round | stored/s | dropped/s | CPU-s/M (+ nats) | ÷ connector stored | ÷ connector CPU | ÷ raw-4096 stored |\n|---|---|---|---|---|---|---|\n", os.Getenv("BENCH_CONNECTOR_BIN_B"), os.Getenv("BENCH_CONNECTOR_ENV_B"))
			for i, x := range r.rounds {
				v := x.versus
				fmt.Fprintf(w, "| %d | %.0f | %.0f | %.2f + %.2f | %.2f | %.2f | %.2f |\n", i+1, v.connMaxB.Stored, v.connMaxB.Dropped,
					v.connMaxB.CPUPerM, v.connMaxB.NATSCPUPerM, v.connMaxB.Stored/v.connMax.Stored, v.connMaxB.CPUPerM/v.connMax.CPUPerM, v.connMaxB.Stored/v.raw4096.Stored)
			}
			fmt.Fprintf(w, "\nmedians: B ÷ connector stored %.2f, CPU %.2f; B ÷ raw-4096 stored %.2f, CPU %.2f\n",
				m["conn-b-vs-conn"], m["conn-b-vs-conn-cpu"], m["conn-b-vs-raw4096"], m["conn-b-vs-raw4096-cpu"])
		}
		fmt.Fprintf(w, "\nmedians: raw-4096 %.0f/s, glue %.0f/s, connector %.0f/s (received %.0f/s, dropped %.0f/s); CPU-s/M publisher (+ nats): raw-4096 %.2f (+ %.2f), glue %.2f (+ %.2f), connector %.2f (+ %.2f)\n",
			m["raw4096-msgs/s"], m["glue-msgs/s"], m["conn-max-msgs/s"], m["conn-max-received/s"], m["conn-max-dropped/s"],
			m["raw4096-cpu-s/M"], m["raw4096-nats-cpu-s/M"], m["glue-cpu-s/M"], m["glue-nats-cpu-s/M"], m["conn-max-cpu-s/M"], m["conn-max-nats-cpu-s/M"])
		fmt.Fprintf(w, "\n| target | measured (median of per-round ratios) | target | |\n|---|---|---|---|\n")
		fmt.Fprintf(w, "| connector stored/s ÷ raw-4096 | %.2f | >= 1.0 | %s |\n", m["conn-vs-raw4096"], passFail(m["conn-vs-raw4096"] >= 1))
		fmt.Fprintf(w, "| connector stored/s ÷ glue | %.2f | >= 1.2 | %s |\n", m["conn-vs-glue"], passFail(m["conn-vs-glue"] >= 1.2))
		fmt.Fprintf(w, "| connector CPU-s/M ÷ raw-4096's | %.2f | <= 1.0 | %s |\n", m["conn-vs-raw4096-cpu"], passFail(m["conn-vs-raw4096-cpu"] <= 1))
		fmt.Fprintf(w, "| glue stored/s ÷ raw-4096 (contrast) | %.2f | | |\n| glue CPU-s/M ÷ raw-4096's (contrast) | %.2f | | |\n", m["glue-vs-raw4096"], m["glue-vs-raw4096-cpu"])
		if x := r.sustain; x.Secs > 0 {
			fmt.Fprintf(w, "| low-lane drops over %.0f s at 80 %% of the connector's maximum (%.0f/s offered, %.0f/s stored, %d of %d slices of %s with drops) | %.0f | 0 | %s |\n",
				x.Secs, x.Offered, x.Stored, x.SlicesWithDrops, x.Slices, sustainSlice, x.Drops, passFail(x.Drops == 0))
		}
		s.printLatencyTargets(w)
	}
	s.sustainResults(&out, "sustain", r.sustain)
	s.latencyResults(&out)
	s.printKnobs(w, &out)
	return out
}

// printLatencyTargets adds the exit-signal rows of issue 12's target table.
func (s *system) printLatencyTargets(w *strings.Builder) {
	r := s.results
	for _, mode := range []string{"lanes", "glue"} {
		idle, flood, over := r.latency[mode+"/idle"], r.latency[mode+"/flood"], r.latency[mode+"/overload"]
		if idle == nil || flood == nil || over == nil {
			continue
		}
		who := "connector"
		if mode == "glue" {
			who = "glue (contrast)"
		}
		bad := func(x map[string]float64) float64 {
			return x["lost"] + x["reordered"] + x["dups"] // lost: sent minus received
		}
		fmt.Fprintf(w, "| %s: exit p99 under flood at %.0f PnL/s ÷ idle p99 | %.2f (%.0f / %.0f µs) | <= 2 | %s |\n",
			who, flood["pnl-rate"], flood["p99-µs"]/idle["p99-µs"], flood["p99-µs"], idle["p99-µs"], passFail(flood["p99-µs"] <= 2*idle["p99-µs"]))
		fmt.Fprintf(w, "| %s: exits lost, duplicated or reordered, idle + flood | %.0f of %.0f | 0 | %s |\n",
			who, bad(idle)+bad(flood), idle["sent"]+flood["sent"], passFail(bad(idle)+bad(flood) == 0))
		fmt.Fprintf(w, "| %s: under 2 x overload (%.0f PnL/s), exits lost / duplicated / reordered | %.0f / %.0f / %.0f of %.0f | 0 | %s |\n",
			who, over["pnl-rate"], over["lost"], over["dups"], over["reordered"], over["sent"], passFail(bad(over) == 0))
		fmt.Fprintf(w, "| %s: overload p99 ÷ idle p99 | %.2f (%.0f / %.0f µs) | <= 10 | %s |\n",
			who, over["p99-µs"]/idle["p99-µs"], over["p99-µs"], idle["p99-µs"], passFail(over["p99-µs"] <= 10*idle["p99-µs"]))
	}
}

// latencyResults adds every latency case's figures and the ratios of the
// targets.
func (s *system) latencyResults(out *resultLines) {
	r := s.results
	for _, key := range latencyKeys {
		x := r.latency[key]
		if x == nil {
			continue
		}
		for _, f := range []struct{ name, key string }{
			{"exit_p50_us", "p50-µs"}, {"exit_p99_us", "p99-µs"}, {"exit_max_us", "max-µs"},
			{"exits_sent", "sent"}, {"exits_lost", "lost"}, {"exits_reordered", "reordered"}, {"exits_duplicated", "dups"},
			{"low_lane_drops", "drops"}, {"failed_publishes", "failed"}, {"pnl_offered_per_s", "pnl-rate"}, {"pnl_stored_per_s", "pnl-stored/s"},
		} {
			out.add(f.name+"_"+key, x[f.key])
		}
	}
	for _, mode := range latencyModes {
		idle := r.latency[mode+"/idle"]
		if idle == nil {
			continue
		}
		for _, c := range latencyCaseNames() {
			if x := r.latency[mode+"/"+c]; x != nil && c != "idle" {
				out.ratio("exit_p99_"+c+"_vs_idle_"+mode, x["p99-µs"], idle["p99-µs"])
			}
		}
	}
	if l, g := r.latency["lanes/flood"], r.latency["glue/flood"]; l != nil && g != nil {
		out.ratio("exit_p99_flood_connector_vs_glue", l["p99-µs"], g["p99-µs"])
	}
	if l, g := r.latency["lanes/overload"], r.latency["glue/overload"]; l != nil && g != nil {
		out.ratio("exit_p99_overload_connector_vs_glue", l["p99-µs"], g["p99-µs"])
	}
}

func (s *system) sustainResults(out *resultLines, prefix string, x sustainResult) {
	if x.Secs == 0 {
		return
	}
	out.add(prefix+"_seconds", x.Secs)
	out.add(prefix+"_offered_per_s", x.Offered)
	out.add(prefix+"_stored_per_s", x.Stored)
	out.add(prefix+"_low_lane_drops", x.Drops)
	out.add(prefix+"_slices_with_drops", float64(x.SlicesWithDrops))
	out.add(prefix+"_cpu_s_per_m", x.CPUPerM)
	// What else used the machine meanwhile: the sustain case dropped only
	// when the latency phase had run before it (BENCHMARKS.md, issue 12).
	out.add(prefix+"_other_cores", x.OtherCores)
	for _, role := range slices.Sorted(maps.Keys(x.RoleCores)) {
		out.add(prefix+"_cores_"+role, x.RoleCores[role])
	}
}

// printKnobs writes the knob rounds.
func (s *system) printKnobs(w *strings.Builder, out *resultLines) {
	r := s.results
	if len(r.knobs) == 0 {
		return
	}
	variants := knobVariants(r.knobLane)
	fmt.Fprintf(w, "\n## Knobs (issue 12): %d rounds of raw-4096, then the connector with each CONNECTOR_PUBLISH_WINDOW (w) and LASERSELL_LOW_LANE (l; l250ms = %d, %s at 80 %% of the connector's maximum), each offered %.1f x what raw stored, in rotating order\n\n",
		len(r.knobs), r.knobLane, knobLaneFor, overOffer)
	fmt.Fprintf(w, "| round | raw-4096 stored/s (CPU-s/M) |")
	for _, v := range variants {
		fmt.Fprintf(w, " %s stored/s (CPU-s/M, dropped/s) |", v.name)
	}
	fmt.Fprintf(w, " other load, cores (raw, then each variant) |\n|---|---|%s---|\n", strings.Repeat("---|", len(variants)))
	for i, k := range r.knobs {
		fmt.Fprintf(w, "| %d | %.0f (%.2f) |", i+1, k.raw4096.Stored, k.raw4096.CPUPerM)
		other := []string{fmt.Sprintf("%.2f", k.raw4096.OtherCores)}
		for _, v := range variants {
			t := k.conn[v.name]
			fmt.Fprintf(w, " %.0f (%.2f, %.0f) |", t.Stored, t.CPUPerM, t.Dropped)
			other = append(other, fmt.Sprintf("%.2f", t.OtherCores))
		}
		fmt.Fprintf(w, " %s |\n", strings.Join(other, " / "))
	}
	m := r.knobMedians()
	fmt.Fprintf(w, "\n| variant | stored/s (median) | ÷ raw-4096 | CPU-s/M | ÷ raw-4096's | dropped/s |\n|---|---|---|---|---|---|\n")
	out.add("knob_raw4096_stored_per_s", m["raw4096-msgs/s"])
	out.add("knob_low_lane", float64(r.knobLane))
	for _, kv := range variants {
		v := kv.name
		fmt.Fprintf(w, "| %s | %.0f | %.2f | %.2f | %.2f | %.0f |\n", v, m[v+"-msgs/s"], m[v+"-vs-raw4096"], m[v+"-cpu-s/M"], m[v+"-cpu-vs-raw4096"], m[v+"-dropped/s"])
		out.add("knob_"+v+"_stored_per_s", m[v+"-msgs/s"])
		out.add("knob_"+v+"_vs_raw4096_stored", m[v+"-vs-raw4096"])
		out.add("knob_"+v+"_cpu_s_per_m", m[v+"-cpu-s/M"])
		out.add("knob_"+v+"_vs_raw4096_cpu", m[v+"-cpu-vs-raw4096"])
		out.add("knob_"+v+"_dropped_per_s", m[v+"-dropped/s"])
	}
	if x := r.knobSustain; x.Secs > 0 {
		fmt.Fprintf(w, "\n%s at 80 %% of its own maximum for %.0f s: offered %.0f/s, stored %.0f/s, low-lane drops %.0f (%d of %d slices), %.2f CPU-s/M\n",
			x.Label, x.Secs, x.Offered, x.Stored, x.Drops, x.SlicesWithDrops, x.Slices, x.CPUPerM)
	}
	s.sustainResults(out, "knob_"+r.knobSustain.Label+"_sustain", r.knobSustain)
}
