package bench

// Issue 11, "R3 versus R1": on one three-node NATS cluster (each node its own
// process, routes on loopback), the connector's PnL throughput and exit
// latency with every stream and bucket at one replica, then at three, each as
// a ratio to a raw nats.go publisher on the same cluster in the same phase.
// Throughput is compared with the raw PublishAsync publisher (window 4096) as
// in the issue-12 rounds; exit latency with the hand-written glue, which
// publishes the upstream's exit frames with plain nats.go. BENCHMARKS.md,
// section "NATS cluster: R3 versus R1 (issue 11)", explains the figures.
//
//	go test -run '^$' -bench ClusterReplicas -benchtime 1x -timeout 20m ./bench/

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

const (
	clusterNodes = 3
	// clusterLoad is the PnL rate of the loaded exit-latency case, as a
	// fraction of what the raw publisher stored in the phase: both the
	// connector and the glue carry it without backing up.
	clusterLoad = 0.5
	// clusterNodeStore bounds each node's file store.
	clusterNodeStore = 8 << 30
)

// clusterLatencyCases are the exit-latency cases of each phase.
var clusterLatencyCases = []struct {
	name string
	load float64
}{{"idle", 0}, {"load", clusterLoad}}

// clusterPhase is what one replication factor measured.
type clusterPhase struct {
	replicas int
	rounds   []versusRound
	latency  map[string]map[string]float64 // "lanes/idle", "glue/load", ...
}

func BenchmarkClusterReplicas(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("needs /proc")
	}
	s := setupClusterSystem(b)
	var phases []clusterPhase
	for _, replicas := range []int{1, 3} {
		ok := b.Run("R"+strconv.Itoa(replicas), func(sb *testing.B) {
			s.b = sb
			defer func() { s.b = b }()
			p := s.clusterPhase(replicas)
			phases = append(phases, p)
			m := p.metrics()
			report(sb, m, "conn-vs-raw4096", "glue-vs-raw4096", "conn-vs-raw4096-cpu", "exit-p99-idle-vs-glue", "exit-p99-load-vs-glue")
		})
		if !ok {
			break
		}
	}
	s.printCluster(phases)
}

// setupClusterSystem builds the connector and starts the cluster's nodes as
// processes, then waits until it places a stream on all three.
func setupClusterSystem(b *testing.B) *system {
	s := newSystem(b)
	type node struct{ client, cluster string }
	nodes := make([]node, clusterNodes)
	for i := range nodes {
		nodes[i] = node{freePort(b), freePort(b)}
	}
	var urls []string
	for i, n := range nodes {
		var routes []string
		for j, o := range nodes {
			if j != i {
				routes = append(routes, "nats-route://"+o.cluster)
			}
		}
		store := filepath.Join(s.dir, "nats-store-n"+strconv.Itoa(i))
		b.Cleanup(func() { _ = os.RemoveAll(store) })
		var nr struct{ URL string }
		s.natsNodes = append(s.natsNodes, startRole(b, b.Cleanup, s.dir, "nats-n"+strconv.Itoa(i), "nats-node", []string{
			"BENCH_STORE_DIR=" + store, "BENCH_NODE=n" + strconv.Itoa(i), "BENCH_CLIENT_ADDR=" + n.client,
			"BENCH_CLUSTER_ADDR=" + n.cluster, "BENCH_ROUTES=" + strings.Join(routes, ","),
		}, nil, &nr))
		urls = append(urls, nr.URL)
	}
	s.connect(strings.Join(urls, ","))
	err := waitFor(60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := s.js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_PROBE", Subjects: []string{"bench.probe"},
			Replicas: clusterNodes, Storage: jetstream.MemoryStorage}); err != nil {
			return fmt.Errorf("an R%d stream: %v: %w", clusterNodes, err, errNotYet)
		}
		return s.js.DeleteStream(ctx, "BENCH_PROBE")
	})
	if err != nil {
		b.Fatalf("the cluster did not form: %v (logs in %s)", err, s.dir)
	}
	return s
}

// roleNATSNode runs one node of the benchmark's cluster: JetStream with file
// storage in BENCH_STORE_DIR, clients on BENCH_CLIENT_ADDR, routes from
// BENCH_CLUSTER_ADDR to BENCH_ROUTES.
func roleNATSNode() error {
	host, port, err := splitHostPort(os.Getenv("BENCH_CLIENT_ADDR"))
	if err != nil {
		return fmt.Errorf("BENCH_CLIENT_ADDR: %w", err)
	}
	chost, cport, err := splitHostPort(os.Getenv("BENCH_CLUSTER_ADDR"))
	if err != nil {
		return fmt.Errorf("BENCH_CLUSTER_ADDR: %w", err)
	}
	routes := server.RoutesFromStr(os.Getenv("BENCH_ROUTES"))
	if len(routes) == 0 {
		return errors.New("BENCH_ROUTES lists no route")
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: os.Getenv("BENCH_NODE"), Host: host, Port: port, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: os.Getenv("BENCH_STORE_DIR"), JetStreamMaxStore: clusterNodeStore, JetStreamMaxMemory: 256 << 20,
		Cluster: server.ClusterOpts{Name: "bench", Host: chost, Port: cport},
		Routes:  routes,
	})
	if err != nil {
		return err
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return errors.New("not accepting connections after 30 s")
	}
	ready(map[string]string{"url": srv.ClientURL()})
	waitTerm()
	srv.Shutdown()
	srv.WaitForShutdown()
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}

// clusterPhase deletes every stream of the cluster, starts a connector whose
// streams and buckets have the given replicas, the glue and a raw publisher
// at the same replicas, and measures the throughput rounds then the
// exit-latency rounds.
func (s *system) clusterPhase(replicas int) clusterPhase {
	s.deleteAllStreams()
	s.rawReplicas = replicas
	r := strconv.Itoa(replicas)
	env := []string{"CONNECTOR_KV_REPLICAS=" + r}
	for _, st := range []string{subjects.StreamLaserSellExit, subjects.StreamLaserSellEvents, subjects.StreamLaserSellPnL, subjects.StreamAudit} {
		env = append(env, "STREAM_"+st+"_REPLICAS="+r)
	}
	conn := s.startRun("r"+r, false, env...)
	defer conn.stop()
	glue := s.startGlue("glue-r" + r) // after the connector, which creates the streams
	defer glue.stop()

	p := clusterPhase{replicas: replicas, latency: map[string]map[string]float64{}}
	for i := range tputRounds {
		p.rounds = append(p.rounds, s.versusWindows(conn, glue, i))
	}
	// The figures are only worth their label if the streams really have
	// that many replicas, each current.
	s.checkReplicas(replicas, subjects.StreamLaserSellPnL, subjects.StreamLaserSellExit, rawStream.Name, "KV_"+subjects.BucketLeases)
	rawStored := median(p.column(func(v versusRound) float64 { return v.raw4096.Stored }))
	aggs := map[string]*latAgg{}
	for range latRounds {
		for mode, rn := range map[string]*run{"lanes": conn, "glue": glue} {
			for _, c := range clusterLatencyCases {
				key := mode + "/" + c.name
				if aggs[key] == nil {
					aggs[key] = &latAgg{pnlRate: c.load * rawStored}
				}
				s.latencyWindow(rn, nil, key, aggs[key])
			}
		}
	}
	for k, a := range aggs {
		p.latency[k] = a.metrics()
	}
	return p
}

// checkReplicas fails the benchmark unless every named stream has replicas
// peers, all current.
func (s *system) checkReplicas(replicas int, streams ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range streams {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			s.b.Fatalf("stream %s: %v", name, err)
		}
		info := st.CachedInfo() // fetched by Stream just now
		peers := 0
		if info.Cluster != nil && info.Cluster.Leader != "" {
			peers = 1
			for _, p := range info.Cluster.Replicas {
				if p.Current {
					peers++
				}
			}
		}
		if info.Config.Replicas != replicas || peers != replicas {
			s.b.Fatalf("stream %s: %d replicas configured, %d current peers; the phase is R%d", name, info.Config.Replicas, peers, replicas)
		}
	}
}

// deleteAllStreams deletes every stream and bucket, so that the next phase's
// processes create them with their own replicas.
func (s *system) deleteAllStreams() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	names := s.js.StreamNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if err := names.Err(); err != nil {
		s.b.Fatalf("listing the streams: %v", err)
	}
	for _, n := range all {
		if err := s.js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			s.b.Fatalf("deleting stream %s: %v", n, err)
		}
	}
}

// column is f of every round.
func (p clusterPhase) column(f func(versusRound) float64) []float64 {
	xs := make([]float64, len(p.rounds))
	for i, v := range p.rounds {
		xs[i] = f(v)
	}
	return xs
}

// metrics are the phase's figures: medians over rounds, ratios the medians
// of the per-round ratios; exit latency pooled over the rounds.
func (p clusterPhase) metrics() map[string]float64 {
	m := map[string]float64{
		"raw4096-msgs/s":       median(p.column(func(v versusRound) float64 { return v.raw4096.Stored })),
		"conn-msgs/s":          median(p.column(func(v versusRound) float64 { return v.connMax.Stored })),
		"glue-msgs/s":          median(p.column(func(v versusRound) float64 { return v.glue.Stored })),
		"conn-vs-raw4096":      median(p.column(func(v versusRound) float64 { return v.connMax.Stored / v.raw4096.Stored })),
		"glue-vs-raw4096":      median(p.column(func(v versusRound) float64 { return v.glue.Stored / v.raw4096.Stored })),
		"conn-vs-raw4096-cpu":  median(p.column(func(v versusRound) float64 { return v.connMax.CPUPerM / v.raw4096.CPUPerM })),
		"raw4096-nats-cpu-s/M": median(p.column(func(v versusRound) float64 { return v.raw4096.NATSCPUPerM })),
		"conn-nats-cpu-s/M":    median(p.column(func(v versusRound) float64 { return v.connMax.NATSCPUPerM })),
		"other-cores":          median(p.column(func(v versusRound) float64 { return (v.raw4096.OtherCores + v.connMax.OtherCores) / 2 })),
	}
	for _, c := range clusterLatencyCases {
		conn, glue := p.latency["lanes/"+c.name], p.latency["glue/"+c.name]
		if conn == nil || glue == nil {
			continue
		}
		m["exit-p50-"+c.name+"-us"], m["exit-p99-"+c.name+"-us"] = conn["p50-µs"], conn["p99-µs"]
		m["glue-exit-p50-"+c.name+"-us"], m["glue-exit-p99-"+c.name+"-us"] = glue["p50-µs"], glue["p99-µs"]
		m["exit-p99-"+c.name+"-vs-glue"] = conn["p99-µs"] / glue["p99-µs"]
		m["exits-bad-"+c.name] = conn["lost"] + conn["reordered"] + conn["dups"] + glue["lost"] + glue["reordered"] + glue["dups"]
		m["pnl-rate-"+c.name] = conn["pnl-rate"]
		m["drops-"+c.name] = conn["drops"]
	}
	return m
}

// printCluster prints each phase's rounds and latency, then R3 against R1,
// and the RESULT lines.
func (s *system) printCluster(phases []clusterPhase) {
	var w strings.Builder
	var lines resultLines
	ms := map[int]map[string]float64{}
	for _, p := range phases {
		m := p.metrics()
		ms[p.replicas] = m
		fmt.Fprintf(&w, "\n## R%d: %d rounds of raw-4096, then the glue and the connector (alternating; each window %s after %s warm-up)\n\n",
			p.replicas, len(p.rounds), tputWindow, tputWarmup)
		fmt.Fprintf(&w, "| round | raw-4096 stored/s | glue stored/s | connector offered/s | stored/s | dropped/s | connector/raw | glue/raw | CPU-s/M raw, glue, connector (+ nats, 3 nodes) | other load, cores |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for i, v := range p.rounds {
			fmt.Fprintf(&w, "| %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f, %.2f, %.2f (+ %.2f, %.2f, %.2f) | %.2f |\n",
				i+1, v.raw4096.Stored, v.glue.Stored, v.connMax.Offered, v.connMax.Stored, v.connMax.Dropped,
				v.connMax.Stored/v.raw4096.Stored, v.glue.Stored/v.raw4096.Stored,
				v.raw4096.CPUPerM, v.glue.CPUPerM, v.connMax.CPUPerM, v.raw4096.NATSCPUPerM, v.glue.NATSCPUPerM, v.connMax.NATSCPUPerM,
				(v.raw4096.OtherCores+v.connMax.OtherCores)/2)
		}
		fmt.Fprintf(&w, "\nexit signals (an exit every %s, %d windows of %s per case, interleaved):\n\n", exitEvery, latRounds, latWindow)
		fmt.Fprintf(&w, "| case | PnL offered/s | who | exits sent / received | lost | reordered | dups | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range clusterLatencyCases {
			for _, mode := range []string{"lanes", "glue"} {
				x := p.latency[mode+"/"+c.name]
				if x == nil {
					continue
				}
				who := map[string]string{"lanes": "connector", "glue": "glue"}[mode]
				fmt.Fprintf(&w, "| %s | %.0f | %s | %.0f / %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
					c.name, x["pnl-rate"], who, x["sent"], x["exits"], x["lost"], x["reordered"], x["dups"], x["p50-µs"], x["p99-µs"], x["max-µs"])
			}
		}
		n := "cluster-R" + strconv.Itoa(p.replicas) + "-"
		for _, k := range []string{"raw4096-msgs/s", "conn-msgs/s", "glue-msgs/s", "conn-vs-raw4096", "glue-vs-raw4096", "conn-vs-raw4096-cpu",
			"exit-p99-idle-us", "glue-exit-p99-idle-us", "exit-p99-idle-vs-glue", "exit-p99-load-us", "glue-exit-p99-load-us", "exit-p99-load-vs-glue",
			"exits-bad-idle", "exits-bad-load", "other-cores"} {
			if v, ok := m[k]; ok {
				lines.add(n+k, v)
			}
		}
	}
	if r1, r3 := ms[1], ms[3]; r1 != nil && r3 != nil {
		fmt.Fprintf(&w, "\n## R3 against R1\n\n| figure | R1 | R3 | R3 / R1 |\n|---|---|---|---|\n")
		for _, k := range []string{"raw4096-msgs/s", "conn-msgs/s", "conn-vs-raw4096", "glue-vs-raw4096", "conn-vs-raw4096-cpu",
			"exit-p99-idle-us", "exit-p99-idle-vs-glue", "exit-p99-load-us", "exit-p99-load-vs-glue"} {
			fmt.Fprintf(&w, "| %s | %.2f | %.2f | %.2f |\n", k, r1[k], r3[k], r3[k]/r1[k])
		}
		lines.ratio("cluster-R3-vs-R1-conn-vs-raw4096", r3["conn-vs-raw4096"], r1["conn-vs-raw4096"])
		lines.ratio("cluster-R3-vs-R1-exit-p99-load-vs-glue", r3["exit-p99-load-vs-glue"], r1["exit-p99-load-vs-glue"])
	}
	if len(s.results.notes) > 0 {
		fmt.Fprintf(&w, "\nnotes:\n")
		for _, n := range s.results.notes {
			fmt.Fprintf(&w, "- %s\n", n)
		}
	}
	w.WriteString("\n")
	lines.writeTo(&w)
	fmt.Print(w.String())
	_ = os.WriteFile(filepath.Join(s.dir, "cluster-summary.md"), []byte(w.String()), 0o644)
}
