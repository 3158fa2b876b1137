package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// ready prints the role's readiness line with v as JSON.
func ready(v any) {
	b, _ := json.Marshal(v)
	fmt.Printf("%s%s\n", readyPrefix, b)
}

// waitTerm blocks until SIGTERM or SIGINT.
func waitTerm() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	signal.Stop(ch)
}

// roleNATS runs the NATS server with JetStream file storage in BENCH_STORE_DIR,
// the same embedded server the connector uses without NATS_URL.
func roleNATS() error {
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:0", StoreDir: os.Getenv("BENCH_STORE_DIR"), ServerName: "bench"})
	if err != nil {
		return err
	}
	ready(map[string]string{"url": srv.URL()})
	waitTerm()
	srv.Stop()
	return nil
}

// rawResult is what the raw publisher reports when it stops.
type rawResult struct {
	Errors       int64   `json:"errors"`        // failed publishes
	PayloadBytes float64 `json:"payload_bytes"` // mean payload size
	Acked        int64   `json:"acked"`
}

// rawStream mirrors LASERSELL_PNL's configuration (file storage, limits,
// duplicates window) on its own subjects.
var rawStream = subjects.StreamSpec{Name: "RAW_PNL", Description: "raw baseline", Subjects: []string{"raw.*.pnl.*"}, Lane: subjects.LaneLow}

// roleRaw publishes pnl_update-shaped payloads with plain nats.go JetStream
// asynchronous publishing (at most BENCH_WINDOW unacknowledged) as fast as acks
// allow, into a file-backed stream configured like LASERSELL_PNL, until
// SIGTERM. The benchmark measures it from outside (stream deltas, /proc CPU),
// exactly like the connector; the result line adds errors and payload size.
func roleRaw() error {
	window, err := strconv.Atoi(os.Getenv("BENCH_WINDOW"))
	if err != nil {
		return fmt.Errorf("BENCH_WINDOW: %w", err)
	}
	nc, js, acked, failed, err := rawPublisher(window, rawStream, subjects.StreamLaserSellPnL)
	if err != nil {
		return err
	}
	defer nc.Close()
	var stop atomic.Bool
	go func() {
		waitTerm()
		stop.Store(true)
	}()
	ready(map[string]string{})

	gen := newPnLGen(1)
	var subjectsByID [10]string
	for i := range subjectsByID {
		subjectsByID[i] = "raw.bench.pnl." + strconv.Itoa(i+1)
	}
	// BENCH_HEADERS=1 adds the connector's headers (same names, same value
	// shapes), to tell the cost of the message contract from the rest.
	headers := os.Getenv("BENCH_HEADERS") == "1"
	var bytes, n int64
	for i := 0; !stop.Load(); i++ {
		id := i % len(subjectsByID)
		payload := gen.next(id)
		bytes += int64(len(payload))
		n++
		var err error
		if headers {
			hdr := make(nats.Header, 8)
			hdr[subjects.HeaderSource] = []string{"lasersell"}
			hdr[subjects.HeaderSession] = []string{"default"}
			hdr[subjects.HeaderType] = []string{"pnl_update"}
			hdr[subjects.HeaderReceived] = []string{time.Now().UTC().Format(time.RFC3339Nano)}
			hdr[subjects.HeaderUpstreamSession] = []string{"1"}
			hdr[subjects.HeaderSeq] = []string{strconv.Itoa(i + 1)}
			_, err = js.PublishMsgAsync(&nats.Msg{Subject: subjectsByID[id], Data: payload, Header: hdr})
		} else {
			_, err = js.PublishAsync(subjectsByID[id], payload)
		}
		if err != nil {
			failed.Add(1)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
	}
	b, _ := json.Marshal(rawResult{Errors: failed.Load(), PayloadBytes: float64(bytes) / float64(max(n, 1)), Acked: acked.Load()})
	fmt.Printf("BENCH-RESULT %s\n", b)
	return nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pnlGen makes pnl_update payloads with the simulator's fields and magnitudes
// (a random walk of the price per position).
type pnlGen struct {
	rng    *rand.Rand
	tokens [10]uint64
	base   [10]uint64
	price  [10]uint64
}

func newPnLGen(seed uint64) *pnlGen {
	g := &pnlGen{rng: rand.New(rand.NewPCG(seed, 2))}
	for i := range g.tokens {
		g.tokens[i] = (g.rng.Uint64N(900) + 100) * 1_000 * 1_000_000
		g.base[i] = 20_000 + g.rng.Uint64N(80_000)
		g.price[i] = g.base[i]
	}
	return g
}

func (g *pnlGen) next(i int) []byte {
	step := int64(g.rng.Uint64N(41)) - 20
	g.price[i] = uint64(max(int64(g.price[i])+int64(g.price[i])*step/1000, 1))
	entry := g.tokens[i] / 1_000_000 * g.base[i]
	proceeds := g.tokens[i] / 1_000_000 * g.price[i]
	b := make([]byte, 0, 224)
	b = append(b, `{"type":"pnl_update","position_id":`...)
	b = strconv.AppendInt(b, int64(i+1), 10)
	b = append(b, `,"profit_units":`...)
	b = strconv.AppendInt(b, int64(proceeds)-int64(entry), 10)
	b = append(b, `,"proceeds_units":`...)
	b = strconv.AppendUint(b, proceeds, 10)
	b = append(b, `,"server_time_ms":`...)
	b = strconv.AppendInt(b, time.Now().UnixMilli(), 10)
	b = append(b, `,"token_price_quote":`...)
	b = strconv.AppendUint(b, g.price[i], 10)
	b = append(b, `,"market_cap_quote":`...)
	b = strconv.AppendUint(b, g.price[i]*1_000_000_000, 10)
	return append(b, '}')
}

// roleSim runs the LaserSell simulator (the package behind `connector sim
// lasersell`, configured by the same flags) plus a control endpoint for the
// benchmark: its counters, the PnL rate, and an exit-signal driver that can be
// started and stopped and records what it sent, in order.
func roleSim(args []string) error {
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv := sim.New(cfg, zerolog.New(os.Stderr).Level(zerolog.InfoLevel).With().Timestamp().Logger())
	url, err := srv.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	drv := &exitDriver{srv: srv, levels: map[uint64]uint32{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/bench/stats", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(srv.Stats())
	})
	mux.HandleFunc("/bench/positions", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(srv.Positions())
	})
	mux.HandleFunc("/bench/pnl", func(w http.ResponseWriter, r *http.Request) {
		rate, err := strconv.ParseFloat(r.URL.Query().Get("rate"), 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		srv.SetPnLRate(rate)
	})
	mux.HandleFunc("/bench/exits/start", func(w http.ResponseWriter, r *http.Request) {
		every, err := time.ParseDuration(r.URL.Query().Get("every"))
		if err == nil {
			err = drv.start(every)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/bench/exits/stop", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(drv.stopDriver())
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	ready(map[string]string{"url": url, "control": "http://" + ln.Addr().String()})
	waitTerm()
	drv.stopDriver()
	_ = hs.Close()
	srv.Close()
	return nil
}

// sentExit is one exit signal the driver had the simulator send.
type sentExit struct {
	Pos   uint64 `json:"pos"`
	Level int64  `json:"level"` // ladder level_index, -1 when absent
}

// driverReport is the driver's record of one start..stop period.
type driverReport struct {
	Sent   []sentExit `json:"sent"`
	Failed int        `json:"failed"`
}

// exitDriver sends exit_signal_with_tx round-robin over the open positions
// through the simulator's API (the same code path as its -exit-every
// schedule: every fourth one a take-profit ladder exit with level_index and
// sell_tokens, the others full exits that, as with the default
// -exit-closes=false, leave the position open).
type exitDriver struct {
	srv    *sim.Server
	mu     sync.Mutex
	stop   chan struct{}
	done   chan struct{}
	report driverReport
	levels map[uint64]uint32
	n      int
}

var exitReasons = []string{"target_profit", "stop_loss", "trailing_stop", "graduation", "timeout"}

func (d *exitDriver) start(every time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		return errors.New("exit driver already running")
	}
	positions := d.srv.Positions()
	if len(positions) == 0 {
		return errors.New("no open positions")
	}
	d.report = driverReport{Sent: []sentExit{}}
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	stop, done := d.stop, d.done
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			p := positions[d.n%len(positions)]
			var err error
			level := int64(-1)
			if d.n%4 == 3 {
				l := d.levels[p.ID]
				err = d.srv.SendLadderExit(p.ID, l, p.Tokens/4)
				if err == nil {
					d.levels[p.ID]++
					level = int64(l)
				}
			} else {
				err = d.srv.SendExitSignal(p.ID, exitReasons[d.n%len(exitReasons)])
			}
			d.n++
			d.mu.Lock()
			if err != nil {
				d.report.Failed++
			} else {
				d.report.Sent = append(d.report.Sent, sentExit{Pos: p.ID, Level: level})
			}
			d.mu.Unlock()
		}
	}()
	return nil
}

func (d *exitDriver) stopDriver() driverReport {
	d.mu.Lock()
	stop, done := d.stop, d.done
	d.stop, d.done = nil, nil
	d.mu.Unlock()
	if stop == nil {
		return driverReport{Sent: []sentExit{}}
	}
	close(stop)
	<-done
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.report
}

// rawPublisher connects the plain nats.go baseline: one JetStream context with
// at most window unacknowledged async publishes, acks and failures counted,
// publishing into spec, a stream configured like the connector's stream like.
func rawPublisher(window int, spec subjects.StreamSpec, like string) (*nats.Conn, jetstream.JetStream, *atomic.Int64, *atomic.Int64, error) {
	nc, err := nats.Connect(os.Getenv("BENCH_NATS_URL"))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	acked, failed := new(atomic.Int64), new(atomic.Int64)
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { acked.Add(1) }),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }),
	)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ret := connector.DefaultRetention(spec)
		if r := os.Getenv("BENCH_REPLICAS"); r != "" {
			ret.Replicas, err = strconv.Atoi(r)
		}
		// The persist mode of the connector's stream (its process reads the
		// same environment): both write to the same kind of stream.
		if pm := os.Getenv("STREAM_" + like + "_PERSIST_MODE"); pm != "" {
			ret.Persist = strings.ToLower(pm)
		}
		if err == nil {
			_, err = js.CreateOrUpdateStream(ctx, connector.StreamConfig(spec, ret))
		}
		cancel()
	}
	if err != nil {
		nc.Close()
		return nil, nil, nil, nil, fmt.Errorf("raw publisher: %w", err)
	}
	return nc, js, acked, failed, nil
}
