package sim

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/openstream/ndjson"
)

// BenchmarkRate500HzManyConnections measures the data rate at period_ms 2 on
// 20 connections (a measurement, so a benchmark rather than a timed test).
// Run: go test -run '^$' -bench Rate500Hz -benchtime 1x ./connector/openstream/sim/
func BenchmarkRate500HzManyConnections(b *testing.B) {
	for range b.N {
		rate500Hz(b)
	}
}

func rate500Hz(t *testing.B) {
	const conns = 20
	const window = time.Second
	_, addr := startSim(t, nil)
	var wg sync.WaitGroup
	var total atomic.Int64
	counts := make([]int64, conns)
	for i := 0; i < conns; i++ {
		c := dial(t, addr)
		c.handshake()
		c.send(`{"cmd":"MONITOR","payload":{"method":"GET","period_ms":2,"url":"/project/robot/joints/joint_states","args":{}}}`)
		wg.Add(1)
		go func(i int, c *client) {
			defer wg.Done()
			r := ndjson.NewReader(c.conn, 0)
			// Skip the warm-up, then count data lines during the window.
			c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			for {
				if _, err := r.Next(); err != nil {
					break
				}
			}
			r = ndjson.NewReader(c.conn, 0)
			c.conn.SetReadDeadline(time.Now().Add(window))
			var n int64
			for {
				if _, err := r.Next(); err != nil {
					break
				}
				n++
			}
			counts[i] = n
			total.Add(n)
		}(i, c)
	}
	wg.Wait()
	perConn := float64(total.Load()) / conns / window.Seconds()
	lo, hi := counts[0], counts[0]
	for _, n := range counts {
		lo, hi = min(lo, n), max(hi, n)
	}
	t.ReportMetric(perConn, "lines/s/conn")
	t.ReportMetric(float64(lo)/window.Seconds(), "min-lines/s/conn")
	t.ReportMetric(float64(hi)/window.Seconds(), "max-lines/s/conn")
}

// nopConn is a net.Conn that discards writes, for measuring the data path alone.
type nopConn struct{ net.Conn }

func (nopConn) Write(p []byte) (int, error)       { return len(p), nil }
func (nopConn) SetWriteDeadline(time.Time) error  { return nil }
func (nopConn) Read([]byte) (int, error)          { return 0, io.EOF }
func (nopConn) Close() error                      { return nil }
func (nopConn) RemoteAddr() net.Addr              { return &net.TCPAddr{} }
func (nopConn) SetReadDeadline(t time.Time) error { return nil }

func benchSession(tb testing.TB, url string) *session {
	s := New(DefaultConfig(), testLogger(tb))
	ss := newSession(s, 1, nopConn{}, s.log)
	ss.mon = &monitor{get: s.compileGet(url, map[string]string{}), info: MonitorInfo{Started: time.Now()}}
	return ss
}

func TestDataPathDoesNotAllocate(t *testing.T) {
	for _, url := range []string{PathJointStates, PathPoseCur, PathHealth, "/unknown"} {
		ss := benchSession(t, url)
		ss.writeData() // warm the buffers up
		if a := testing.AllocsPerRun(200, func() { ss.writeData(); ss.flush() }); a > 0 {
			t.Errorf("%s: %.1f allocations per data line", url, a)
		}
	}
}

func BenchmarkDataLine(b *testing.B) {
	ss := benchSession(b, PathJointStates)
	b.ReportAllocs()
	for b.Loop() {
		ss.writeData()
		ss.flush()
	}
}
