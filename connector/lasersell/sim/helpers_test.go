package sim

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

const (
	testKey = "test-key"
	walletA = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
	walletB = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"
	mintA   = "4k3Dyjzvzp8eMZWUXbBCjEvwSkkk59S5iCNLY3QrkX6R"
	mintB   = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
)

var goodStrategy = map[string]any{"target_profit_pct": 50.0, "stop_loss_pct": 20.0}

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("SIM_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// startSim starts a server on loopback with cfg (APIKey defaults to testKey).
func startSim(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.APIKey == "" {
		cfg.APIKey = testKey
	}
	s := New(cfg, testLogger(t))
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func quietConfig() Config {
	c := DefaultConfig()
	c.APIKey = testKey
	return c
}

type frame struct {
	mt  int
	raw []byte
	msg map[string]any
	err error
	at  time.Time
}

func (f frame) typ() string {
	s, _ := f.msg["type"].(string)
	return s
}

func (f frame) num(key string) float64 {
	v, _ := f.msg[key].(float64)
	return v
}

// client is a gorilla client whose reader goroutine feeds a channel, so reads can
// time out without corrupting the connection.
type client struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan frame
	pings  atomic.Int64
}

func dial(t testing.TB, s *Server) *client {
	t.Helper()
	return dialWith(t, s, websocket.DefaultDialer)
}

// dialWith is dial with a dialer of the test's (a wss:// client's TLS settings).
func dialWith(t testing.TB, s *Server, d *websocket.Dialer) *client {
	t.Helper()
	h := http.Header{}
	h.Set("x-api-key", testKey)
	ws, resp, err := d.Dial(s.URL(), h)
	if err != nil {
		t.Fatalf("dial: %v (resp %v)", err, resp)
	}
	c := &client{t: t, ws: ws, frames: make(chan frame, 1<<16)}
	ws.SetPingHandler(func(data string) error {
		c.pings.Add(1)
		return ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	go func() {
		defer close(c.frames)
		for {
			mt, raw, err := ws.ReadMessage()
			f := frame{mt: mt, raw: raw, err: err, at: time.Now()}
			if err == nil && mt == websocket.TextMessage {
				_ = json.Unmarshal(raw, &f.msg)
			}
			c.frames <- f
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { ws.Close() })
	return c
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(websocket.TextMessage, b)
}

func (c *client) sendRaw(mt int, b []byte) {
	c.t.Helper()
	if err := c.ws.WriteMessage(mt, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) configure(wallets ...string) {
	c.send(map[string]any{"type": "configure", "wallet_pubkeys": wallets, "strategy": goodStrategy})
}

func (c *client) next(d time.Duration) (frame, bool) {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			return frame{err: errors.New("reader closed")}, true
		}
		return f, true
	case <-time.After(d):
		return frame{}, false
	}
}

// expect reads the next frame and requires its type.
func (c *client) expect(typ string) frame {
	c.t.Helper()
	f, ok := c.next(3 * time.Second)
	if !ok {
		c.t.Fatalf("timeout waiting for %s", typ)
	}
	if f.err != nil {
		c.t.Fatalf("waiting for %s: %v", typ, f.err)
	}
	if f.typ() != typ {
		c.t.Fatalf("want %s, got %s", typ, f.raw)
	}
	return f
}

// expectError reads the next frame and requires an error with code.
func (c *client) expectError(code string) frame {
	c.t.Helper()
	f := c.expect("error")
	if f.msg["code"] != code {
		c.t.Fatalf("want error code %s, got %s", code, f.raw)
	}
	if m, _ := f.msg["message"].(string); m == "" {
		c.t.Fatalf("error without message: %s", f.raw)
	}
	return f
}

// until skips frames until one of type typ arrives.
func (c *client) until(typ string, d time.Duration) frame {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		f, ok := c.next(time.Until(deadline))
		if !ok {
			c.t.Fatalf("timeout waiting for %s", typ)
		}
		if f.err != nil {
			c.t.Fatalf("waiting for %s: %v", typ, f.err)
		}
		if f.typ() == typ {
			return f
		}
	}
}

// barrier sends an application ping and returns every frame before the pong.
func (c *client) barrier() []frame {
	c.t.Helper()
	c.send(map[string]any{"type": "ping", "client_time_ms": time.Now().UnixMilli()})
	var out []frame
	for {
		f, ok := c.next(3 * time.Second)
		if !ok {
			c.t.Fatal("timeout waiting for pong")
		}
		if f.err != nil {
			c.t.Fatalf("waiting for pong: %v", f.err)
		}
		if f.typ() == "pong" {
			return out
		}
		out = append(out, f)
	}
}

// quiet requires that nothing arrives for d.
func (c *client) quiet(d time.Duration) {
	c.t.Helper()
	if f, ok := c.next(d); ok {
		c.t.Fatalf("unexpected frame: %s (err %v)", f.raw, f.err)
	}
}

// waitErr reads until the connection fails and returns the frames read before
// the failure and the error.
func (c *client) waitErr(d time.Duration) ([]frame, error) {
	c.t.Helper()
	var got []frame
	deadline := time.Now().Add(d)
	for {
		f, ok := c.next(time.Until(deadline))
		if !ok {
			c.t.Fatal("connection did not end")
		}
		if f.err != nil {
			return got, f.err
		}
		got = append(got, f)
	}
}

func types(fs []frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.typ()
	}
	return out
}
