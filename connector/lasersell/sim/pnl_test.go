package sim

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// pnlReader is a lean loopback client: it configures walletA and counts frames,
// reusing one buffer, so the measurement is of the simulator, not of the client.
type pnlReader struct {
	ws  *websocket.Conn
	buf []byte
}

func newPNLReader(tb testing.TB, s *Server) *pnlReader {
	tb.Helper()
	h := http.Header{"X-Api-Key": {testKey}}
	d := websocket.Dialer{ReadBufferSize: 256 << 10}
	ws, _, err := d.Dial(s.URL(), h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ws.Close() })
	b, _ := json.Marshal(map[string]any{"type": "configure", "wallet_pubkeys": []string{walletA}, "strategy": goodStrategy})
	if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
		tb.Fatal(err)
	}
	return &pnlReader{ws: ws, buf: make([]byte, 4096)}
}

// next reads one frame into the reused buffer.
func (r *pnlReader) next() ([]byte, error) {
	_, rd, err := r.ws.NextReader()
	if err != nil {
		return nil, err
	}
	n := 0
	for {
		if n == len(r.buf) {
			r.buf = append(r.buf, make([]byte, len(r.buf))...)
		}
		m, err := rd.Read(r.buf[n:])
		n += m
		if err == io.EOF {
			return r.buf[:n], nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func (r *pnlReader) untilPnL(tb testing.TB) {
	tb.Helper()
	for {
		b, err := r.next()
		if err != nil {
			tb.Fatal(err)
		}
		var m struct{ Type string }
		if json.Unmarshal(b, &m) == nil && m.Type == "pnl_update" {
			return
		}
	}
}

func pnlServer(tb testing.TB, rate float64, positions int) *Server {
	cfg := quietConfig()
	cfg.PnLRate = rate
	s := startSim(tb, cfg)
	for i := range positions {
		s.OpenPosition(walletA, fakeKey("bench-mint", string(rune('a'+i))), 1_000_000_000)
	}
	return s
}

// BenchmarkPnLTargetRate measures how closely the simulator holds a 200,000
// msgs/s PnL rate, as received by a real client on loopback (issue target:
// at least 100,000). A benchmark, not a test: rates on a shared machine are
// measurements, not assertions.
// Run: go test -run '^$' -bench PnLTargetRate -benchtime 1x ./connector/lasersell/sim/
func BenchmarkPnLTargetRate(b *testing.B) {
	const target = 200_000.0
	s := pnlServer(b, target, 10)
	r := newPNLReader(b, s)
	r.untilPnL(b)
	window := 500 * time.Millisecond
	var rate, size float64
	for range b.N {
		start := time.Now()
		n, bytes := 0, 0
		for time.Since(start) < window {
			m, err := r.next()
			if err != nil {
				b.Fatal(err)
			}
			n++
			bytes += len(m)
		}
		rate = float64(n) / time.Since(start).Seconds()
		size = float64(bytes) / float64(n)
	}
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(rate/target, "of-target")
	b.ReportMetric(size, "B/msg")
	s.SetPnLRate(0)
}

// BenchmarkPnLRate reports the simulator's ceiling: PnL as fast as the loopback
// client drains it. Run: go test -run x -bench PnLRate ./connector/lasersell/sim/
func BenchmarkPnLRate(b *testing.B) {
	s := pnlServer(b, 1e8, 20)
	r := newPNLReader(b, s)
	r.untilPnL(b)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := r.next(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func TestAppendPnLFrameDoesNotAllocate(t *testing.T) {
	c := &conn{rng: rand.New(rand.NewPCG(1, 2)), buf: make([]byte, 0, 1<<20), budget: -1}
	p := &pnlPos{id: 7, tokens: 1_000_000_000, entry: 30_000_000, price: 30_000, base: 30_000}
	allocs := testing.AllocsPerRun(1000, func() {
		c.buf = c.buf[:0]
		c.appendPnLFrame(p, 1_760_000_000_000)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per pnl frame", allocs)
	}
}
