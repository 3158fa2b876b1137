package openstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

const (
	pathJoints  = sim.PathJointStates
	pathMotorOn = sim.PathMotorOn
	pathInsert  = sim.PathTrajInsertPt
	robotName   = "cell1"
	waitLong    = 5 * time.Second
)

// testConfig is Defaults with durations short enough for tests.
func testConfig() Config {
	c := Defaults()
	c.DialTimeout = time.Second
	c.AckTimeout = 2 * time.Second
	c.ControlWindow = 100 * time.Millisecond
	c.StopTimeout = 500 * time.Millisecond
	c.Keepalive = 100 * time.Millisecond
	c.StallPeriods = 10
	c.StallMin = 250 * time.Millisecond
	c.BackoffMin = 20 * time.Millisecond
	c.BackoffMax = 200 * time.Millisecond
	c.HealthyAfter = 50 * time.Millisecond
	c.HandshakeRetryMin = 300 * time.Millisecond
	c.HandshakeRetryMax = 600 * time.Millisecond
	return c
}

// startSim starts a simulator on a loopback port, closed at cleanup.
func startSim(t *testing.T, mut func(*sim.Config)) *sim.Server {
	t.Helper()
	cfg := sim.DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := sim.New(cfg, connectortest.Logger(t).With().Str("side", "sim").Logger().Level(zerolog.InfoLevel))
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

type fixture struct {
	t     *testing.T
	env   *connectortest.Env
	sim   *sim.Server
	robot *Robot
	stop  func() error
}

// robotConfig has one monitor "joints" at 5 ms and CONTROL allowed for the
// trajectory services and motor_on.
func robotConfig(addr string) RobotConfig {
	return RobotConfig{
		Name: robotName, Addr: addr,
		Monitors:     map[string]Recipe{"joints": {URL: pathJoints, Method: "GET", PeriodMS: 5}},
		ControlAllow: []string{"/project/robot/trajectory/*", pathMotorOn},
	}
}

// start runs one robot against s on a fresh (or the given) NATS store.
func start(t *testing.T, s *sim.Server, rc RobotConfig, cfg Config, opts connectortest.Options) *fixture {
	t.Helper()
	env := connectortest.Start(t, opts)
	f := &fixture{t: t, env: env, sim: s}
	f.stop = env.Run(connectortest.Opened(RobotSession(rc, cfg), &f.robot))
	// The runtime registers the command services before it runs the source.
	select {
	case <-f.robot.ready:
	case <-time.After(waitLong):
		t.Fatal("robot did not start")
	}
	return f
}

func (f *fixture) subject(parts ...string) string {
	return strings.Join(append([]string{subjects.KindOpenStream, robotName}, parts...), ".")
}

func (f *fixture) cmd(name, body string) connectortest.Reply {
	f.t.Helper()
	return f.env.Request(f.subject("cmd", name), body, 10*time.Second)
}

func (f *fixture) mustOK(name, body string) connectortest.Reply {
	f.t.Helper()
	r := f.cmd(name, body)
	if !r.OK {
		f.t.Fatalf("%s %s: refused: %+v", name, body, r.Error)
	}
	return r
}

func (f *fixture) mustRefuse(name, body, code string) {
	f.t.Helper()
	r := f.cmd(name, body)
	if r.OK || r.Error == nil || r.Error.Code != code {
		f.t.Fatalf("%s %s: want refusal %s, got %+v", name, body, code, r.Raw)
	}
}

// waitData waits until the monitor's data subject holds at least n messages.
func (f *fixture) waitData(monitor string, n uint64) uint64 {
	f.t.Helper()
	got := f.env.WaitCount(subjects.StreamOpenStreamData, f.subject("data", monitor), n, waitLong)
	if got < n {
		f.t.Fatalf("data.%s: %d messages, want >= %d", monitor, got, n)
	}
	return got
}

func (f *fixture) dataCount(monitor string) uint64 {
	return f.env.Count(subjects.StreamOpenStreamData, f.subject("data", monitor))
}

// statuses returns every status document published so far.
func (f *fixture) statuses() []map[string]any {
	f.t.Helper()
	n := int(f.env.Count(subjects.StreamOpenStreamEvent, f.subject("status")))
	var out []map[string]any
	for _, m := range f.env.Fetch(subjects.StreamOpenStreamEvent, f.subject("status"), n, time.Second) {
		var doc map[string]any
		if err := json.Unmarshal(m.Data(), &doc); err != nil {
			f.t.Fatalf("status is not JSON: %q", m.Data())
		}
		out = append(out, doc)
	}
	return out
}

// waitStatus waits for a status matching match and returns it.
func (f *fixture) waitStatus(what string, match func(map[string]any) bool) map[string]any {
	f.t.Helper()
	var found map[string]any
	connectortest.Eventually(f.t, waitLong, what, func() bool {
		for _, st := range f.statuses() {
			if match(st) {
				found = st
				return true
			}
		}
		return false
	})
	return found
}

func detail(st map[string]any) map[string]any {
	d, _ := st["detail"].(map[string]any)
	return d
}

func isConn(st map[string]any, state, conn string) bool {
	return st["state"] == state && detail(st)["conn"] == conn
}

// events returns the payloads on openstream.cell1.event.<typ>.
func (f *fixture) events(typ string) []jetstream.Msg {
	f.t.Helper()
	subj := f.subject("event", typ)
	n := int(f.env.Count(subjects.StreamOpenStreamEvent, subj))
	return f.env.Fetch(subjects.StreamOpenStreamEvent, subj, n, time.Second)
}

// eventCount waits until at least want events of typ are stored (events are
// published by the high lane independently of command replies) and returns
// how many there are.
func (f *fixture) eventCount(typ string, want int) int {
	f.t.Helper()
	return int(f.env.WaitCount(subjects.StreamOpenStreamEvent, f.subject("event", typ), uint64(want), waitLong))
}

// received returns the commands the simulator got, filtered by cmd.
func received(s *sim.Server, cmd string) []sim.Command {
	var out []sim.Command
	for _, c := range s.Received() {
		if cmd == "" || c.Cmd == cmd {
			out = append(out, c)
		}
	}
	return out
}

func waitSim(t *testing.T, s *sim.Server, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := s.WaitFor(ctx, cond); err != nil {
		t.Fatalf("simulator: timed out waiting for %s", what)
	}
}

// monitorsActive counts simulator sessions with an active MONITOR.
func monitorsActive(s *sim.Server) int {
	n := 0
	for _, in := range s.Sessions() {
		if in.Monitor != nil {
			n++
		}
	}
	return n
}

// fakeController is a scripted Open Stream server for cases the simulator
// must not model (a close mid-line, a held reply): it acknowledges HANDSHAKE
// and hands every MONITOR line to onMonitor, which answers on c; returning
// false closes the connection. It stops at test cleanup.
func fakeController(t *testing.T, onMonitor func(c net.Conn, line []byte) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var cmd struct {
						Cmd string `json:"cmd"`
					}
					_ = json.Unmarshal(line, &cmd)
					switch cmd.Cmd {
					case "HANDSHAKE":
						_, _ = c.Write([]byte(`{"type":"handshake_ack","ok":true,"version":"1.0.0"}` + "\n"))
					case "MONITOR":
						if !onMonitor(c, bytes.TrimSpace(line)) {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
