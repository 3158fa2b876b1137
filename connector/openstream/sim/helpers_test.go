package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/openstream/ndjson"
)

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("SIM_TEST_LOG") != "" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// startSim starts a simulator on a loopback port; it is closed when the test ends.
func startSim(t testing.TB, mut func(*Config)) (*Server, string) {
	t.Helper()
	cfg := DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := New(cfg, testLogger(t))
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, addr
}

// msg is one decoded server line.
type msg struct {
	raw []byte
	m   map[string]any
}

func (m msg) typ() string    { s, _ := m.m["type"].(string); return s }
func (m msg) err() string    { s, _ := m.m["error"].(string); return s }
func (m msg) isData() bool   { return m.typ() == "data" }
func (m msg) String() string { return string(m.raw) }

type client struct {
	t    testing.TB
	conn net.Conn
	r    *ndjson.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: ndjson.NewReader(c, 1<<20)}
}

func (c *client) send(line string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c.conn, line+"\n"); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

func (c *client) cmd(cmd string, payload any) {
	c.t.Helper()
	b, err := ndjson.AppendCommand(nil, cmd, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(string(b[:len(b)-1]))
}

// next reads one line; ok is false on EOF or timeout (err tells which).
func (c *client) next(timeout time.Duration) (msg, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.r.Next()
	if err != nil {
		return msg{}, err
	}
	m := msg{raw: bytes.Clone(line)}
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&m.m); err != nil {
		m.m = nil
	}
	return m, nil
}

// expect returns the first line matching pred within timeout, skipping others.
func (c *client) expect(what string, timeout time.Duration, pred func(msg) bool) msg {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := c.next(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if pred(m) {
			return m
		}
	}
}

// expectNonData returns the next line that is not a data event.
func (c *client) expectNonData() msg {
	c.t.Helper()
	return c.expect("a non-data line", 2*time.Second, func(m msg) bool { return !m.isData() })
}

func (c *client) expectError(code string) msg {
	c.t.Helper()
	m := c.expectNonData()
	if m.err() != code || m.typ() != "" {
		c.t.Fatalf("want error %s, got %s", code, m)
	}
	if _, ok := m.m["message"].(string); !ok {
		c.t.Fatalf("error without message: %s", m)
	}
	return m
}

func (c *client) expectType(typ string) msg {
	c.t.Helper()
	m := c.expectNonData()
	if m.typ() != typ {
		c.t.Fatalf("want %s, got %s", typ, m)
	}
	return m
}

func (c *client) expectData() msg {
	c.t.Helper()
	return c.expect("data", 2*time.Second, msg.isData)
}

// expectSilence fails if a non-data line arrives within d.
func (c *client) expectSilence(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		m, err := c.next(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			c.t.Fatalf("connection failed while expecting silence: %v", err)
		}
		if !m.isData() {
			c.t.Fatalf("unexpected line %s", m)
		}
	}
}

// expectClosed reads until EOF, returning the lines seen, then closes its side as a client
// would; it fails after timeout.
func (c *client) expectClosed(timeout time.Duration) []msg {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []msg
	for {
		m, err := c.next(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection still open after %v (saw %d lines)", timeout, len(seen))
			}
			c.conn.Close()
			return seen
		}
		seen = append(seen, m)
	}
}

func (c *client) handshake() {
	c.t.Helper()
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	c.expectType("handshake_ack")
}

func (c *client) monitor(url string, period int) {
	c.t.Helper()
	c.cmd("MONITOR", map[string]any{"method": "GET", "url": url, "period_ms": period, "args": map[string]any{}})
	c.expectType("monitor_ack")
}

func waitFor(t testing.TB, s *Server, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.WaitFor(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func num(t testing.TB, v any) float64 {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("%v (%T) is not a number", v, v)
	}
	f, err := n.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func nums(t testing.TB, v any) []float64 {
	t.Helper()
	a, ok := v.([]any)
	if !ok {
		t.Fatalf("%v is not an array", v)
	}
	out := make([]float64, len(a))
	for i, x := range a {
		out[i] = num(t, x)
	}
	return out
}
