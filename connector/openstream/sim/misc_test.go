package sim

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestAppendNum(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0.0"}, {90, "90.0"}, {-90, "-90.0"}, {98.923641, "98.923641"}, {2.8705, "2.8705"},
		{math.Copysign(0, -1), "-0.0"}, {1e-9, "0.0"}, {123456.1234567, "123456.123457"}} {
		if got := string(appendNum(nil, tc.in)); got != tc.want {
			t.Errorf("appendNum(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{"plain", "quote\" back\\", "nl\nret\r\ttab\x00\x1f", "utf8 한국어", "bad \xff utf8"} {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q -> %s: %v", s, b, err)
		}
		if strings.ContainsAny(string(b), "\n\r") {
			t.Fatalf("raw newline in %q", b)
		}
		if s != "bad \xff utf8" && got != s {
			t.Fatalf("round trip %q -> %q", s, got)
		}
	}
}

func TestForwardKinematics(t *testing.T) {
	// The vendor's po_cur example: joints [0,90,0,0,0,0] -> x 1782, y 0, z 1938, ry 90.
	p := forward([Axes]float64{0, 90, 0, 0, 0, 0})
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-6 }
	if !near(p.x, 1782) || !near(p.y, 0) || !near(p.z, 1938) || !near(p.ry, 90) {
		t.Fatalf("%+v", p)
	}
	// J1 turns the arm about the vertical axis.
	q := forward([Axes]float64{90, 90, 0, 0, 0, 0})
	if !near(q.x, 0) || !near(q.y, 1782) || !near(q.z, 1938) {
		t.Fatalf("%+v", q)
	}
}

func TestRobotInterpolation(t *testing.T) {
	r := newRobot(true)
	t0 := time.Now()
	to := Home()
	to[0] = 10
	r.insert(t0, trajPoint{to: to, dur: 100 * time.Millisecond})
	to2 := to
	to2[0] = 20
	r.insert(t0, trajPoint{to: to2, dur: 100 * time.Millisecond})
	for _, tc := range []struct {
		at   time.Duration
		want float64
	}{{0, 0}, {50 * time.Millisecond, 5}, {100 * time.Millisecond, 10}, {150 * time.Millisecond, 15}, {time.Second, 20}} {
		p, v, _ := r.state(t0.Add(tc.at))
		if math.Abs(p[0]-tc.want) > 1e-9 {
			t.Fatalf("at %v: %v, want %v", tc.at, p[0], tc.want)
		}
		if tc.at == time.Second && v[0] != 0 {
			t.Fatalf("velocity after the trajectory: %v", v)
		}
	}
}

func TestConfigFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"-version", "2.1.0", "-armed-timeout", "250ms", "-watchdog", "stream",
		"-fault-garbage-every", "1s", "-fault-drop-every", "100", "-max-conns", "3", "-echo-id", "-ts", "monitor"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Version != "2.1.0" || cfg.ArmedTimeout != 250*time.Millisecond || cfg.Watchdog != WatchdogStream ||
		cfg.Faults.GarbageEvery != time.Second || cfg.Faults.DropEveryLines != 100 || cfg.MaxConns != 3 ||
		!cfg.EchoID || cfg.TSClock != TSMonitor || cfg.IdleTimeout != 180*time.Second {
		t.Fatalf("%+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if s := New(cfg, testLogger(t)); s.major != 2 {
		t.Fatal(s.major)
	}
	for _, bad := range []Config{{Version: "1.0"}, {Watchdog: "loose"}, {TSClock: "utc"},
		{Faults: Faults{StallEvery: time.Second}}, {MaxConns: -1}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
	// The zero Config means the defaults.
	if got := (Config{}).withDefaults(); got.Version != "1.0.0" || got.ArmedTimeout != 5*time.Second ||
		got.IdleTimeout != 180*time.Second || got.MaxLine != 64<<10 || got.Watchdog != WatchdogStrict {
		t.Fatalf("%+v", got)
	}
}

func TestHTTPRest(t *testing.T) {
	t.Parallel()
	s, _ := startSim(t, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	base := "http://" + s.HTTPAddr()
	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	if st, m := get("/project/robot/joints/joint_states"); st != 200 || len(m["position"].([]any)) != 6 {
		t.Fatal(st, m)
	}
	resp, err := http.Post(base+"/project/robot/motor_off", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(err, resp)
	}
	resp.Body.Close()
	if st, m := get("/project/robot/motor_on_state"); st != 200 || m["val"].(float64) != 2 {
		t.Fatal(st, m)
	}
	if st, _ := get("/nope"); st != 404 {
		t.Fatal(st)
	}
	resp, _ = http.Post(base+"/project/robot/start", "application/json", strings.NewReader("{}"))
	if resp.StatusCode != 409 {
		t.Fatal(resp.StatusCode)
	}
	resp.Body.Close()
}

func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	s := New(cfg, testLogger(t))
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var clients []*client
	for i := 0; i < 5; i++ {
		c := dial(t, addr)
		c.handshake()
		c.monitor("/api/health", 2)
		clients = append(clients, c)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close hangs")
	}
	for _, c := range clients {
		c.expectClosed(2 * time.Second)
		c.conn.Close()
	}
	if _, err := s.Start("127.0.0.1:0"); err != ErrServerClosed {
		t.Fatalf("Start after Close: %v", err)
	}
	s.Close() // idempotent
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left (before: %d)\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestServeContext(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{}, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, ln) }()
	c := dial(t, ln.Addr().String())
	c.handshake()
	if s.Addr() != ln.Addr().String() {
		t.Fatal(s.Addr())
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return")
	}
	if s.Active() != 0 {
		t.Fatal("sessions survive Serve")
	}
	c.expectClosed(2 * time.Second)
}
