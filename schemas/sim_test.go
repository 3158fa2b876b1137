package schemas_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
)

// Paths of the recorded transcripts: server frames of one scripted session
// with each simulator, one per line, re-recorded with -update.
var (
	laserSellTranscript  = filepath.Join("..", "testdata", "lasersell", "session.jsonl")
	openStreamTranscript = filepath.Join("..", "testdata", "openstream", "session.ndjson")
)

// Types every LaserSell recording must hold (market_regime is the
// simulator's unknown future type).
var laserSellTypes = []string{"hello_ok", "balance_update", "position_opened", "position_closed", "exit_signal_with_tx",
	"pnl_update", "pong", "error", "liquidity_snapshot", "trade_tick", "market_regime"}

// Schemas every Open Stream recording must hold.
var openStreamSchemas = []string{"openstream/handshake_ack", "openstream/monitor_ack", "openstream/data", "openstream/stop_ack",
	"openstream/control_err", "openstream/error"}

// recording keeps the first few frames of each kind, in arrival order.
type recording struct {
	perKind map[string]int
	lines   [][]byte
}

func (r *recording) add(kind string, frame []byte) {
	if r.perKind == nil {
		r.perKind = map[string]int{}
	}
	if r.perKind[kind] >= 3 {
		return
	}
	r.perKind[kind]++
	r.lines = append(r.lines, bytes.Clone(frame))
}

func (r *recording) write(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, l := range r.lines {
		b.Write(bytes.TrimSpace(l))
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %d frames in %s", len(r.lines), path)
}

// The LaserSell simulator's frames, read over a real WebSocket while a
// client configures, pings, requests an exit, closes a position and sends an
// unsupported message, validate against the schema of their type.
func TestLaserSellSimulatorOutput(t *testing.T) {
	v := newValidator(t)
	cfg := lssim.DefaultConfig()
	cfg.APIKey = "sim-key"
	cfg.AutoPositions = 2
	cfg.PnLRate = 200
	cfg.LiquidityEvery = 20 * time.Millisecond
	cfg.TradeTickEvery = 20 * time.Millisecond
	cfg.UnknownTypeEvery = 30 * time.Millisecond
	cfg.ExitEvery = 50 * time.Millisecond
	cfg.ExitCloses = true
	s := lssim.New(cfg, zerolog.Nop())
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)

	ws, _, err := websocket.DefaultDialer.Dial(s.URL(), http.Header{"x-api-key": {"sim-key"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	send := func(frame string) {
		t.Helper()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"configure","wallet_pubkeys":["7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"],"strategy":{"target_profit_pct":50,"stop_loss_pct":20,"trailing_stop_pct":0}}`)
	send(`{"type":"ping","client_time_ms":1706000000000}`)
	send(`{"type":"teleport"}`) // answered with an error frame

	var rec recording
	seen := map[string]int{}
	requested := false
	deadline := time.Now().Add(10 * time.Second)
	for !coversAll(seen, laserSellTypes) {
		if time.Now().After(deadline) {
			t.Fatalf("simulator frames so far %v; want every type of %v", seen, laserSellTypes)
		}
		_ = ws.SetReadDeadline(deadline)
		mt, frame, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v (seen %v)", err, seen)
		}
		if mt != websocket.TextMessage {
			t.Fatalf("unexpected binary frame %q", frame)
		}
		name := v.laserSellSchema(frame)
		if err := v.validate(name, frame); err != nil {
			t.Error(err)
		}
		var f struct {
			Type       string `json:"type"`
			PositionID uint64 `json:"position_id"`
		}
		_ = json.Unmarshal(frame, &f)
		seen[f.Type]++
		rec.add(f.Type, frame)
		if f.Type == "position_opened" && !requested {
			requested = true
			send(fmt.Sprintf(`{"type":"request_exit_signal","position_id":%d,"slippage_bps":300}`, f.PositionID))
			send(fmt.Sprintf(`{"type":"close_position","position_id":%d}`, f.PositionID))
		}
	}
	if *update {
		rec.write(t, laserSellTranscript)
	}
}

// The Open Stream simulator's lines, read over a real TCP connection through
// HANDSHAKE, two MONITORs (one answering a REST status instead of a result),
// CONTROLs that succeed and fail, an unknown command and the STOPs, validate.
func TestOpenStreamSimulatorOutput(t *testing.T) {
	v := newValidator(t)
	cfg := ossim.DefaultConfig()
	cfg.EchoID = true
	s := ossim.New(cfg, zerolog.Nop())
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	lines := bufio.NewScanner(nc)
	lines.Buffer(nil, 1<<20)
	send := func(cmd string) {
		t.Helper()
		if _, err := nc.Write([]byte(cmd + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	var rec recording
	seen := map[string]int{}
	// next reads lines until one for schema want arrives (data lines keep
	// coming in between), validating and recording all of them.
	next := func(want string) []byte {
		t.Helper()
		for lines.Scan() {
			line := lines.Bytes()
			name := v.openStreamSchema(line)
			if err := v.validate(name, line); err != nil {
				t.Error(err)
			}
			seen[name]++
			rec.add(name, line)
			if name == want {
				return bytes.Clone(line)
			}
		}
		t.Fatalf("connection ended waiting for %s (seen %v): %v", want, seen, lines.Err())
		return nil
	}
	send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	next("openstream/handshake_ack")
	send(`{"cmd":"MONITOR","payload":{"url":"/project/robot/joints/joint_states","method":"GET","period_ms":5,"id":7}}`)
	next("openstream/monitor_ack")
	next("openstream/data")
	send(`{"cmd":"STOP","payload":{"target":"control"}}`) // nothing_to_stop
	next("openstream/error")
	send(`{"cmd":"CONTROL","payload":{"url":"/project/robot/motor_on","method":"POST","body":{}}}`) // silent success
	send(`{"cmd":"CONTROL","payload":{"url":"/project/robot/no_such_service","method":"POST","body":{}}}`)
	next("openstream/control_err")
	send(`{"cmd":"MONITOR","payload":{"url":"/project/robot/motor_off","method":"GET","period_ms":5}}`) // 405: status, no result
	next("openstream/monitor_ack")
	for {
		line := next("openstream/data")
		if bytes.Contains(line, []byte(`"status":`)) {
			break
		}
	}
	send(`{"cmd":"REBOOT","payload":{}}`)
	if line := next("openstream/error"); !bytes.Contains(line, []byte("invalid_cmd")) {
		t.Errorf("unknown command answered %s", line)
	}
	send(`{"cmd":"STOP","payload":{"target":"monitor"}}`)
	next("openstream/stop_ack")
	send(`{"cmd":"STOP","payload":{"target":"session"}}`)
	next("openstream/stop_ack")
	for _, want := range openStreamSchemas {
		if seen[want] == 0 {
			t.Errorf("no %s line (seen %v)", want, seen)
		}
	}
	if *update {
		rec.write(t, openStreamTranscript)
	}
}

func coversAll(seen map[string]int, want []string) bool {
	for _, w := range want {
		if seen[w] == 0 {
			return false
		}
	}
	return true
}

// The recorded transcripts in testdata validate line by line and still hold
// every message kind they were recorded for.
func TestRecordedTranscripts(t *testing.T) {
	v := newValidator(t)
	for _, tc := range []struct {
		path   string
		schema func([]byte) string
		want   []string
	}{
		{laserSellTranscript, v.laserSellSchema, prefixed("lasersell/", laserSellTypes)},
		{openStreamTranscript, v.openStreamSchema, openStreamSchemas},
	} {
		data, err := os.ReadFile(tc.path)
		if err != nil {
			t.Fatalf("%v (record it with: go test ./schemas -run SimulatorOutput -args -update)", err)
		}
		seen := map[string]int{}
		for i, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			name := tc.schema(line)
			if err := v.validate(name, line); err != nil {
				t.Errorf("%s:%d: %v", tc.path, i+1, err)
			}
			seen[name]++
			var f struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(line, &f) == nil && name == "lasersell/event" {
				seen["lasersell/"+f.Type]++
			}
		}
		for _, w := range tc.want {
			if seen[w] == 0 {
				t.Errorf("%s holds no %s (has %v)", tc.path, w, keys(seen))
			}
		}
	}
}

func prefixed(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

func keys(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, " ")
}
