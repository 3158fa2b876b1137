package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

// Roles of the Open Stream benchmarks, dispatched by TestMain (main_test.go).
const (
	roleOSSim = "openstream-sim" // N Open Stream simulators, one listener each
	roleOSRaw = "openstream-raw" // plain nats.go async publishing of data payloads
)

// osSimReady is the readiness line of the simulator role.
type osSimReady struct {
	Addrs   []string `json:"addrs"`   // one controller per robot
	Control string   `json:"control"` // the role's HTTP control endpoint
}

// osSimStats sums the simulators' sessions.
type osSimStats struct {
	Servers   int   `json:"servers"`
	Sessions  int   `json:"sessions"`
	Monitors  int   `json:"monitors"`   // sessions with an active MONITOR
	Streaming int   `json:"streaming"`  // servers with at least one active MONITOR
	DataLines int64 `json:"data_lines"` // data events written by the open sessions
	Accepted  int   `json:"accepted"`   // connections accepted in total (reconnects show here)
}

// osControlRecv is one CONTROL a simulator handled: the benchmark's sequence
// number (carried in the trajectory point) and the simulator's receive time.
type osControlRecv struct {
	Seq int64 `json:"seq"`
	At  int64 `json:"at_ns"`
	Err string
}

// roleOpenStreamSim runs BENCH_OS_N simulated Hi6 controllers (the package
// behind `connector sim openstream`, configured by the same flags), each a
// sim.Server with its own TCP listener, in one process; plus an HTTP endpoint
// for the benchmark: session counters and the CONTROLs each server received
// with their receive times (sim.Server.Received).
func roleOpenStreamSim(args []string) error {
	n, err := strconv.Atoi(os.Getenv("BENCH_OS_N"))
	if err != nil || n < 1 {
		return fmt.Errorf("BENCH_OS_N=%q: want a positive count", os.Getenv("BENCH_OS_N"))
	}
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("sim openstream", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	servers := make([]*sim.Server, n)
	rd := osSimReady{Addrs: make([]string, n)}
	for i := range servers {
		srv := sim.New(cfg, log.With().Int("robot", i).Logger())
		addr, err := srv.Start("127.0.0.1:0")
		if err != nil {
			return err
		}
		defer srv.Close()
		servers[i], rd.Addrs[i] = srv, addr
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/bench/stats", func(w http.ResponseWriter, _ *http.Request) {
		st := osSimStats{Servers: n}
		for _, srv := range servers {
			mon := 0
			for _, si := range srv.Sessions() {
				st.Sessions++
				st.DataLines += si.DataLines
				if si.Monitor != nil {
					mon++
				}
			}
			st.Monitors += mon
			if mon > 0 {
				st.Streaming++
			}
			st.Accepted += srv.Connections()
		}
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("/bench/controls", func(w http.ResponseWriter, r *http.Request) {
		i, err := strconv.Atoi(r.URL.Query().Get("robot"))
		if err != nil || i < 0 || i >= n {
			http.Error(w, "robot: want 0.."+strconv.Itoa(n-1), http.StatusBadRequest)
			return
		}
		out := []osControlRecv{}
		for _, c := range servers[i].Received() {
			if c.Cmd != "CONTROL" {
				continue
			}
			seq, ok := controlSeq(c.Raw)
			if !ok {
				continue
			}
			out = append(out, osControlRecv{Seq: seq, At: c.At.UnixNano(), Err: c.Err})
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	rd.Control = "http://" + ln.Addr().String()
	ready(rd)
	waitTerm()
	_ = hs.Close()
	return nil
}

// controlSeq extracts the benchmark's sequence number from a CONTROL line:
// point[0] of the trajectory point is seq/1000 written with three decimals.
func controlSeq(raw []byte) (int64, bool) {
	var line struct {
		Payload struct {
			Body struct {
				Point []float64 `json:"point"`
			} `json:"body"`
		} `json:"payload"`
	}
	if json.Unmarshal(raw, &line) != nil || len(line.Payload.Body.Point) == 0 {
		return 0, false
	}
	return int64(math.Round(line.Payload.Body.Point[0] * 1000)), true
}

// osRawStream mirrors OPENSTREAM_DATA (file storage, the low-lane defaults)
// on its own subjects.
var osRawStream = subjects.StreamSpec{Name: "RAW_OSDATA", Description: "raw baseline for Open Stream data",
	Subjects: []string{"rawos.*.data.*"}, Lane: subjects.LaneLow}

// osRawResult is what the raw publisher reports when it stops.
type osRawResult struct {
	Sent   int64 `json:"sent"`
	Acked  int64 `json:"acked"`
	Errors int64 `json:"errors"`
}

// roleOpenStreamRaw publishes the data lines of BENCH_PAYLOADS (one per line,
// captured from OPENSTREAM_DATA) with plain nats.go jetstream.PublishAsync (at
// most BENCH_WINDOW unacknowledged, one JetStream context) into a file-backed
// stream configured like OPENSTREAM_DATA, over BENCH_SUBJECTS subjects (one
// per robot), at BENCH_RATE messages per second, until SIGTERM. By default one
// loop publishes in bursts every 2 ms; BENCH_RAW_MODE=robots has one goroutine
// per subject on its own ticker instead (the robots' arrival pattern).
func roleOpenStreamRaw() error {
	window, err := strconv.Atoi(os.Getenv("BENCH_WINDOW"))
	if err != nil {
		return fmt.Errorf("BENCH_WINDOW: %w", err)
	}
	rate, err := strconv.ParseFloat(os.Getenv("BENCH_RATE"), 64)
	if err != nil || rate <= 0 {
		return fmt.Errorf("BENCH_RATE=%q", os.Getenv("BENCH_RATE"))
	}
	nsubj, err := strconv.Atoi(os.Getenv("BENCH_SUBJECTS"))
	if err != nil || nsubj < 1 {
		return fmt.Errorf("BENCH_SUBJECTS=%q", os.Getenv("BENCH_SUBJECTS"))
	}
	payloads, err := readLines(os.Getenv("BENCH_PAYLOADS"))
	if err != nil {
		return err
	}
	if len(payloads) == 0 {
		return errors.New("no payloads")
	}
	nc, js, acked, failed, err := rawPublisher(window, osRawStream, subjects.StreamOpenStreamData)
	if err != nil {
		return err
	}
	defer nc.Close()
	subs := make([]string, nsubj)
	for i := range subs {
		subs[i] = fmt.Sprintf("rawos.r%03d.data.joints", i+1)
	}
	var stop atomic.Bool
	go func() {
		waitTerm()
		stop.Store(true)
	}()
	ready(map[string]string{})

	var sent atomic.Int64
	publish := func(i int64, subject string) {
		if _, err := js.PublishAsync(subject, payloads[i%int64(len(payloads))]); err != nil {
			failed.Add(1)
		}
		sent.Add(1)
	}
	if os.Getenv("BENCH_RAW_MODE") == "robots" {
		// One goroutine per subject, each on its own ticker, phases spread
		// over the period: the arrival pattern of N robots at period 2 ms.
		period := time.Duration(float64(nsubj) / rate * float64(time.Second))
		done := make(chan struct{})
		var wg sync.WaitGroup
		for r := range nsubj {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(period * time.Duration(r) / time.Duration(nsubj))
				t := time.NewTicker(period)
				defer t.Stop()
				for i := int64(r); ; i += int64(nsubj) {
					select {
					case <-t.C:
					case <-done:
						return
					}
					publish(i, subs[r])
				}
			}()
		}
		for !stop.Load() {
			time.Sleep(50 * time.Millisecond)
		}
		close(done)
		wg.Wait()
	} else {
		// One loop, in bursts every 2 ms.
		const tick = 2 * time.Millisecond
		start := time.Now()
		var i int64
		for !stop.Load() {
			due := int64(time.Since(start).Seconds() * rate)
			for ; i < due; i++ {
				publish(i, subs[i%int64(nsubj)])
			}
			el := time.Since(start)
			time.Sleep(el.Truncate(tick) + tick - el)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
	}
	b, _ := json.Marshal(osRawResult{Sent: sent.Load(), Acked: acked.Load(), Errors: failed.Load()})
	fmt.Printf("BENCH-RESULT %s\n", b)
	return nil
}

func readLines(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out = append(out, []byte(line))
		}
	}
	return out, sc.Err()
}
