package lasersell

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

const (
	testKey = "sk-test-0123456789-secret"
	session = "t1"
	walletA = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
	walletB = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"
	walletC = "3Kz9Gk1xQq8u1vTt2bQx5Yp7Wm4Rr6Ss8Dd2Ee3Ff4Gg"
	mintA   = "4k3Dyjzvzp8eMZWUXbBCjEvwSkkk59S5iCNLY3QrkX6R"
	wait    = 5 * time.Second
)

// startSim starts a simulator on loopback requiring testKey.
func startSim(t *testing.T, cfg sim.Config) *sim.Server {
	t.Helper()
	cfg.APIKey = testKey
	s := sim.New(cfg, zerolog.Nop())
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// testConfig is a configuration with short timeouts, one wallet and a strategy.
func testConfig(url string) Config {
	c := DefaultConfig()
	c.APIKey = testKey
	c.URL = url
	c.Session = session
	c.Wallets = []string{walletA}
	c.TargetProfitPct = 50
	c.StopLossPct = 20
	c.PingInterval = time.Minute // tests that need pings shorten it
	c.ReadTimeout = 2 * time.Minute
	c.WriteTimeout = 2 * time.Second
	c.DialTimeout = 2 * time.Second
	c.BackoffBase = 10 * time.Millisecond
	c.BackoffMax = 50 * time.Millisecond
	c.HealthyAfter = 50 * time.Millisecond
	c.PingTimeout = 2 * time.Second
	c.ReconcileAfter = 50 * time.Millisecond
	return c
}

// rig is one connector runtime with the LaserSell source on it.
type rig struct {
	t    *testing.T
	env  *connectortest.Env
	src  *Source
	stop func() error
}

// run starts a runtime (on storeDir when given) with a source built from cfg.
func run(t *testing.T, cfg Config, storeDir string) *rig {
	t.Helper()
	return runWith(t, cfg, connectortest.Options{StoreDir: storeDir})
}

// runWith is run with runtime options (CommandTimeout defaults to 5 s).
func runWith(t *testing.T, cfg Config, opts connectortest.Options) *rig {
	t.Helper()
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = 5 * time.Second
	}
	env := connectortest.Start(t, opts)
	return startRig(t, env, cfg)
}

// startRig runs the session cfg declares on env's runtime.
func startRig(t *testing.T, env *connectortest.Env, cfg Config) *rig {
	t.Helper()
	r := &rig{t: t, env: env}
	r.stop = env.Run(connectortest.Opened(NewSession(cfg), &r.src))
	return r
}

// shutdown stops the runtime and its NATS server, keeping the store directory.
func (r *rig) shutdown() {
	r.t.Helper()
	if err := r.stop(); err != nil {
		r.t.Fatalf("runtime: %v", err)
	}
	r.env.Server.Stop()
}

func (r *rig) request(cmd, body string) connectortest.Reply {
	r.t.Helper()
	return r.env.Request(subjects.Command(subjects.KindLaserSell, session, cmd), body, wait)
}

// mustOK requires a successful reply.
func (r *rig) mustOK(cmd, body string) connectortest.Reply {
	r.t.Helper()
	rep := r.request(cmd, body)
	if !rep.OK {
		r.t.Fatalf("%s %s: refused: %+v", cmd, body, rep.Error)
	}
	return rep
}

// waitConnected waits for a connected status with the given upstream session.
func (r *rig) waitConnected() map[string]any {
	r.t.Helper()
	var st map[string]any
	connectortest.Eventually(r.t, wait, "connected status", func() bool {
		st = r.status()
		return st != nil && st["state"] == "connected"
	})
	return st
}

// status returns the session's last status as its JSON document.
func (r *rig) status() map[string]any {
	r.t.Helper()
	doc := r.env.Runtime.Statuses()[subjects.KindLaserSell+"."+session]
	if doc == nil {
		return nil
	}
	b, err := json.Marshal(doc)
	if err != nil {
		r.t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		r.t.Fatal(err)
	}
	return st
}

// fetch returns the messages on filter, requiring exactly n.
func (r *rig) fetch(stream, filter string, n int) []jetstream.Msg {
	r.t.Helper()
	msgs := r.env.Fetch(stream, filter, n, wait)
	if len(msgs) != n {
		r.t.Fatalf("%s %s: want %d messages, got %d", stream, filter, n, len(msgs))
	}
	return msgs
}

// statuses returns every status message stored so far.
func (r *rig) statuses() []jetstream.Msg {
	r.t.Helper()
	filter := "lasersell." + session + ".status"
	return r.fetch(subjects.StreamLaserSellEvents, filter, int(r.env.Count(subjects.StreamLaserSellEvents, filter)))
}

// position reads one position entry from KV (nil when absent).
func (r *rig) position(id string) map[string]any {
	r.t.Helper()
	kv, err := r.env.JS.KeyValue(context.Background(), subjects.BucketPositions)
	if err != nil {
		r.t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "lasersell."+session+"."+id)
	if err != nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		r.t.Fatal(err)
	}
	return m
}

// memPosition returns a copy of the source's in-memory position (zero if absent).
func (r *rig) memPosition(id uint64) position {
	r.src.mu.Lock()
	defer r.src.mu.Unlock()
	if p := r.src.positions[id]; p != nil {
		return *p
	}
	return position{}
}

// desired reads the desired configure from KV.
func (r *rig) desired() map[string]any {
	r.t.Helper()
	kv, err := r.env.JS.KeyValue(context.Background(), subjects.BucketDesired)
	if err != nil {
		r.t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "lasersell."+session+".configure")
	if err != nil {
		r.t.Fatalf("desired configure: %v", err)
	}
	var doc struct {
		Configure map[string]any `json:"configure"`
	}
	if err := json.Unmarshal(e.Value(), &doc); err != nil {
		r.t.Fatal(err)
	}
	return doc.Configure
}

// metric returns the value of a session series of the runtime's registry.
func (r *rig) metric(name string) float64 {
	r.t.Helper()
	mfs, err := r.env.Registry.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// waitFrame waits for the first client frame the simulator received that
// matches typ (and the optional predicate) on a connection >= minConn.
func waitFrame(t *testing.T, s *sim.Server, minConn int, typ string, match func(map[string]any) bool) (sim.ClientFrame, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var body map[string]any
	f, err := s.WaitFor(ctx, func(f sim.ClientFrame) bool {
		if f.Conn < minConn || f.Type != typ {
			return false
		}
		body = nil
		if json.Unmarshal(f.Raw, &body) != nil {
			return false
		}
		return match == nil || match(body)
	})
	if err != nil {
		t.Fatalf("no %s frame on connection >= %d: %v", typ, minConn, err)
	}
	return f, body
}

// commandFrames counts the frames of client command types (pings excluded)
// the simulator received.
func commandFrames(s *sim.Server) map[string]int {
	out := map[string]int{}
	for _, f := range s.Received() {
		if f.Type != "" && f.Type != typePing {
			out[f.Type]++
		}
	}
	return out
}

func wallets(body map[string]any) string {
	list, _ := body["wallet_pubkeys"].([]any)
	parts := make([]string, len(list))
	for i, w := range list {
		parts[i], _ = w.(string)
	}
	return strings.Join(parts, ",")
}
