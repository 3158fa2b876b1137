package sim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestHandshakeAck(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, nil)
	c := dial(t, addr)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	m := c.expectNonData()
	if got, want := string(m.raw), `{"type":"handshake_ack","ok":true,"version":"1.0.0"}`; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	// A repeated HANDSHAKE with nothing active is accepted again.
	c.handshake()
}

func TestHandshakeErrors(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, nil)
	c := dial(t, addr)
	for _, tc := range []struct{ line, code string }{
		{`{"cmd":"HANDSHAKE"}`, ErrMissingField},
		{`{"cmd":"HANDSHAKE","payload":[1]}`, ErrInvalidPayload},
		{`{"cmd":"HANDSHAKE","payload":null}`, ErrInvalidPayload},
		{`{"cmd":"HANDSHAKE","payload":{}}`, ErrMissingMajor},
		{`{"cmd":"HANDSHAKE","payload":{"major":"1"}}`, ErrInvalidMajorType},
		{`{"cmd":"HANDSHAKE","payload":{"major":1.5}}`, ErrInvalidMajorType},
		{`{"cmd":"HANDSHAKE","payload":{"major":1e0}}`, ErrInvalidMajorType},
		{`{"cmd":"HANDSHAKE","payload":{"major":null}}`, ErrInvalidMajorType},
		{`{"cmd":"HANDSHAKE","payload":{"major":true}}`, ErrInvalidMajorType},
		{`{"cmd":"HANDSHAKE","payload":{"major":-1}}`, ErrInvalidVersion},
		{`{"cmd":"HANDSHAKE","payload":{"major":-99999999999999999999}}`, ErrInvalidVersion},
		{`{"cmd":"HANDSHAKE","payload":{"major":2}}`, ErrVersionMismatch},
		{`{"cmd":"HANDSHAKE","payload":{"major":0}}`, ErrVersionMismatch},
		{`{"cmd":"HANDSHAKE","payload":{"major":99999999999999999999}}`, ErrVersionMismatch},
	} {
		c.send(tc.line)
		if m := c.expectError(tc.code); tc.code == ErrVersionMismatch && !strings.Contains(m.m["message"].(string), "1.0.0") {
			t.Errorf("version_mismatch message should name the server version: %s", m)
		}
	}
	// Still usable, and none of the failures counted as a handshake.
	c.cmd("STOP", map[string]any{"target": "session"})
	c.expectError(ErrHandshakeRequired)
	c.handshake()
}

func TestOtherMajorVersion(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.Version = "2.3.4" })
	c := dial(t, addr)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	c.expectError(ErrVersionMismatch)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":2}}`)
	if m := c.expectType("handshake_ack"); m.m["version"] != "2.3.4" {
		t.Fatal(m)
	}
}

func TestHandshakeRequired(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, nil)
	c := dial(t, addr)
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","url":"/api/health","period_ms":10}}`)
	c.expectError(ErrHandshakeRequired)
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
	c.expectError(ErrHandshakeRequired)
	c.send(`{"cmd":"STOP","payload":{"target":"session"}}`)
	c.expectError(ErrHandshakeRequired)
	// Unknown commands are invalid_cmd even before the handshake.
	c.send(`{"cmd":"PING","payload":{}}`)
	c.expectError(ErrInvalidCmd)
}

func TestEnvelopeErrors(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	for _, tc := range []struct{ line, code string }{
		{`not json`, ErrInvalidNDJSON},
		{`{"cmd":"HANDSHAKE",`, ErrInvalidNDJSON},
		{`[1,2]`, ErrInvalidNDJSON},
		{`"HANDSHAKE"`, ErrInvalidNDJSON},
		{`null`, ErrInvalidNDJSON},
		{`{"payload":{}}`, ErrMissingField},
		{`{"cmd":5,"payload":{}}`, ErrInvalidType},
		{`{"cmd":"monitor","payload":{}}`, ErrInvalidCmd},
		{`{"cmd":"RESET","payload":{}}`, ErrInvalidCmd},
		{`{"cmd":"MONITOR"}`, ErrMissingField},
		{`{"cmd":"MONITOR","payload":"x"}`, ErrInvalidPayload},
		{`{"cmd":"CONTROL","payload":[]}`, ErrInvalidPayload},
		{`{"cmd":"STOP","payload":3}`, ErrInvalidPayload},
	} {
		c.send(tc.line)
		c.expectError(tc.code)
	}
	c.send("\r\n\n   ") // empty lines are skipped; whitespace is not JSON
	c.expectError(ErrInvalidNDJSON)
	c.handshake()
	waitFor(t, s, "records", func() bool { return len(s.Received()) >= 16 })
	rec := s.Received()
	if rec[1].Raw == nil || string(rec[1].Raw) != "not json" || rec[1].Err != ErrInvalidNDJSON || rec[1].Conn != 1 {
		t.Fatalf("bad record %+v", rec[1])
	}
	if last := rec[len(rec)-1]; last.Cmd != "HANDSHAKE" || last.Err != "" {
		t.Fatalf("bad record %+v", last)
	}
}

func TestOversizedLineResync(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, func(c *Config) { c.MaxLine = 1024 })
	c := dial(t, addr)
	big := `{"cmd":"HANDSHAKE","payload":{"major":1,"pad":"` + strings.Repeat("x", 5000) + `"}}`
	c.send(big)
	c.expectError(ErrRxBufOverflow)
	c.handshake() // the line after the oversized one is read normally
	rec, _ := s.WaitCommand(context.Background(), func(c Command) bool { return c.Err == ErrRxBufOverflow })
	if len(rec.Raw) == 0 || len(rec.Raw) > 64 {
		t.Fatalf("oversized record should keep a prefix: %q", rec.Raw)
	}
}

func TestMonitorValidation(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	long := "/" + strings.Repeat("a", 2048)
	for _, tc := range []struct {
		payload string
		code    string
	}{
		{`{"method":"GET","period_ms":10}`, ErrMissingURL},
		{`{"url":5,"method":"GET","period_ms":10}`, ErrInvalidURL},
		{`{"url":"api/health","method":"GET","period_ms":10}`, ErrInvalidURL},
		{`{"url":"/api/ health","method":"GET","period_ms":10}`, ErrInvalidURL},
		{`{"url":"/api/\thealth","method":"GET","period_ms":10}`, ErrInvalidURL},
		{`{"url":"` + long + `","method":"GET","period_ms":10}`, ErrURLTooLong},
		{`{"url":"/api/health","period_ms":10}`, ErrMissingMethod},
		{`{"url":"/api/health","method":"POST","period_ms":10}`, ErrInvalidMethod},
		{`{"url":"/api/health","method":"get","period_ms":10}`, ErrInvalidMethod},
		{`{"url":"/api/health","method":1,"period_ms":10}`, ErrInvalidMethod},
		{`{"url":"/api/health","method":"GET"}`, ErrMissingPeriodMS},
		{`{"url":"/api/health","method":"GET","period_ms":1.5}`, ErrInvalidPeriod},
		{`{"url":"/api/health","method":"GET","period_ms":"10"}`, ErrInvalidPeriod},
		{`{"url":"/api/health","method":"GET","period_ms":null}`, ErrInvalidPeriod},
		{`{"url":"/api/health","method":"GET","period_ms":10,"args":[]}`, ErrInvalidArgs},
		{`{"url":"/api/health","method":"GET","period_ms":10,"args":"a=1"}`, ErrInvalidArgs},
		{`{"url":"/api/health","method":"GET","period_ms":10,"args":null}`, ErrInvalidArgs},
		{`{"url":"/api/health","method":"GET","period_ms":10,"args":{"a":{"b":1}}}`, ErrInvalidValue},
	} {
		c.send(`{"cmd":"MONITOR","payload":` + tc.payload + `}`)
		c.expectError(tc.code)
	}
	// Exactly 2048 is fine; extra fields such as id are ignored.
	c.send(`{"cmd":"MONITOR","payload":{"url":"/` + strings.Repeat("a", 2047) + `","method":"GET","period_ms":1000,"id":7,"extra":true}}`)
	c.expectType("monitor_ack")
	if d := c.expectData(); num(t, d.m["status"]) != 404 || d.m["result"] != nil || d.m["id"] != nil {
		t.Fatalf("unknown GET url should stream status 404 without result/id: %s", d)
	}
}

func TestMonitorClampAndReplace(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	for _, tc := range []struct{ in, want int }{{0, 2}, {-5, 2}, {1, 2}, {2, 2}, {100000, 30000}, {30000, 30000}, {250, 250}} {
		c.send(fmt.Sprintf(`{"cmd":"MONITOR","payload":{"url":"/api/health","method":"GET","period_ms":%d}}`, tc.in))
		c.expectType("monitor_ack")
		waitFor(t, s, "monitor info", func() bool {
			ss := s.Sessions()
			return len(ss) == 1 && ss[0].Monitor != nil && ss[0].Monitor.PeriodMS == tc.want
		})
	}
	c.send(`{"cmd":"MONITOR","payload":{"url":"/api/health","method":"GET","period_ms":99999999999999999999}}`)
	c.expectType("monitor_ack")
	waitFor(t, s, "clamp of a huge period", func() bool { return s.Sessions()[0].Monitor.PeriodMS == 30000 })

	// Replacement: the new recipe streams, the old one stops.
	c.monitor("/project/robot/motor_on_state", 5)
	deadline := time.Now().Add(2 * time.Second)
	for n := 0; n < 20; {
		d := c.expectData()
		res, _ := d.m["result"].(map[string]any)
		if res["status"] == "ok" { // a health line sent before the replacement
			if n > 0 {
				t.Fatal("old MONITOR still streaming after replacement")
			}
			continue
		}
		if res["_type"] != "JObject" || num(t, res["val"]) != 0 {
			t.Fatalf("unexpected data %s", d)
		}
		n++
		if time.Now().After(deadline) {
			t.Fatal("too slow")
		}
	}
	if ss := s.Sessions(); len(ss) != 1 || ss[0].Monitor.URL != "/project/robot/motor_on_state" {
		t.Fatalf("sessions %+v", ss)
	}
}

func TestMonitorExclusive(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.MonitorExclusive = true })
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 50)
	c.cmd("MONITOR", map[string]any{"method": "GET", "url": "/api/health", "period_ms": 10})
	c.expectError(ErrMonitorAlreadyActive)
	c.cmd("STOP", map[string]any{"target": "monitor"})
	c.expectType("stop_ack")
	c.monitor("/api/health", 50)
}

func TestMonitorData(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.EchoID = true })
	c := dial(t, addr)
	c.handshake()

	before := time.Now().UnixMilli()
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","period_ms":2,"url":"/project/robot/joints/joint_states","args":{"jno_start":1,"jno_n":6},"id":1}}`)
	c.expectType("monitor_ack")
	d := c.expectData()
	if !strings.HasPrefix(string(d.raw), `{"type":"data","id":1,"ts":`) {
		t.Fatalf("field order/echo: %s", d)
	}
	if ts := num(t, d.m["ts"]); ts < float64(before) || ts > float64(time.Now().UnixMilli()) {
		t.Fatalf("ts %v not epoch ms", ts)
	}
	if num(t, d.m["svc_dur_ms"]) < 0 {
		t.Fatal(d)
	}
	res := d.m["result"].(map[string]any)
	if res["_type"] != "JObject" || fmt.Sprint(nums(t, res["position"])) != fmt.Sprint(Home()) ||
		len(nums(t, res["velocity"])) != 6 || len(nums(t, res["effort"])) != 6 {
		t.Fatalf("joint_states: %s", d)
	}

	home := Home()
	c.monitor("/project/robot/joints/joint_states?jno_start=2", 1000) // inline query
	if p := nums(t, c.expectData().m["result"].(map[string]any)["position"]); fmt.Sprint(p) != fmt.Sprint(home[1:]) {
		t.Fatalf("jno_start=2: %v", p)
	}
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","period_ms":1000,"url":"/project/robot/joints/joint_states","args":{"jno_start":"3","jno_n":2}}}`)
	c.expectType("monitor_ack")
	if p := nums(t, c.expectData().m["result"].(map[string]any)["position"]); fmt.Sprint(p) != fmt.Sprint(home[2:4]) {
		t.Fatalf("jno_start=3 jno_n=2: %v", p)
	}
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","period_ms":1000,"url":"/project/robot/joints/joint_states","args":{"jno_start":9}}}`)
	c.expectType("monitor_ack")
	if d := c.expectData(); num(t, d.m["result"].(map[string]any)["code"]) != 400 {
		t.Fatalf("bad jno_start: %s", d)
	}

	c.monitor("/project/robot/po_cur", 1000)
	res = c.expectData().m["result"].(map[string]any)
	if res["_type"] != "Pose" || res["crd"] != "base" || num(t, res["mechinfo"]) != 1 || num(t, res["j2"]) != 90 {
		t.Fatalf("po_cur: %v", res)
	}
	for _, k := range []string{"x", "y", "z", "rx", "ry", "rz"} {
		num(t, res[k])
	}
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","period_ms":1000,"url":"/project/robot/po_cur","args":{"crd":2,"mechinfo":1}}}`)
	c.expectType("monitor_ack")
	if res = c.expectData().m["result"].(map[string]any); res["crd"] != "joint" || res["x"] != nil || num(t, res["j5"]) != -90 {
		t.Fatalf("po_cur crd=2: %v", res)
	}

	c.monitor("/project/robot/motor_on_state", 1000)
	if res = c.expectData().m["result"].(map[string]any); num(t, res["val"]) != 0 {
		t.Fatalf("motor_on_state: %v", res)
	}
	c.monitor("/api/health", 1000)
	if d := c.expectData(); d.m["result"].(map[string]any)["status"] != "ok" {
		t.Fatal(d)
	}
	c.monitor("/project/robot/motor_on", 1000) // POST-only service
	if d := c.expectData(); num(t, d.m["status"]) != 405 {
		t.Fatal(d)
	}
}

func TestMonitorTSClock(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.TSClock = TSMonitor })
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 20)
	first := num(t, c.expectData().m["ts"])
	var last float64
	for i := 0; i < 5; i++ {
		last = num(t, c.expectData().m["ts"])
	}
	if first > 5 || last < 60 || last > 2000 {
		t.Fatalf("monitor-relative ts: first %v last %v", first, last)
	}
}

func TestControlNoReplyAndTrajectory(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	mon := dial(t, addr) // a second connection observes the shared arm
	mon.handshake()
	mon.monitor("/project/robot/joints/joint_states", 5)

	c := dial(t, addr)
	c.handshake()
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/trajectory/joint_traject_init","args":{},"body":{}}}`)
	target := [6]float64{10, 80, 5, -5, -80, 30}
	c.cmd("CONTROL", map[string]any{"method": "POST", "url": PathTrajInsertPt, "args": map[string]any{},
		"body": map[string]any{"interval": 0.05, "time_from_start": -1, "look_ahead_time": 0.004, "point": target}})
	c.expectSilence(150 * time.Millisecond) // CONTROL success has no reply line

	mon.expect("the inserted point in MONITOR data", 2*time.Second, func(m msg) bool {
		if !m.isData() {
			return false
		}
		p := nums(t, m.m["result"].(map[string]any)["position"])
		return fmt.Sprint(p) == fmt.Sprint(target[:])
	})
	if s.Joints() != target || s.TrajectoryPoints() != 1 {
		t.Fatalf("joints %v points %d", s.Joints(), s.TrajectoryPoints())
	}
	// Intermediate positions are interpolated over the interval.
	c.cmd("CONTROL", map[string]any{"method": "POST", "url": PathTrajInsertPt,
		"body": map[string]any{"interval": 0.3, "point": Home()}})
	mid := mon.expect("an interpolated position", 2*time.Second, func(m msg) bool {
		if !m.isData() {
			return false
		}
		p := nums(t, m.m["result"].(map[string]any)["position"])
		return p[0] > 1 && p[0] < 9
	})
	if v := nums(t, mid.m["result"].(map[string]any)["velocity"]); v[0] > -30 || v[0] < -36 {
		t.Fatalf("velocity during the move: %v (want about -33 deg/s)", v)
	}
	waitFor(t, s, "home", func() bool { return s.Joints() == Home() })
	if ss := s.Sessions(); !ss[1].ControlActive || ss[0].ControlActive {
		t.Fatalf("control active flags: %+v", ss)
	}
}

func TestControlErrors(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	for _, tc := range []struct{ payload, code string }{
		{`{"method":"POST","body":{}}`, ErrMissingURL},
		{`{"url":"project/robot/start","method":"POST"}`, ErrInvalidURL},
		{`{"url":"/project/robot /start","method":"POST"}`, ErrInvalidURL},
		{`{"url":"/project/robot/start"}`, ErrMissingMethod},
		{`{"url":"/project/robot/start","method":"FOO"}`, ErrInvalidMethod},
		{`{"url":"/project/robot/start","method":7}`, ErrInvalidMethod},
		{`{"url":"/project/robot/start","method":"GET"}`, ErrMethodNotAllowed},
		{`{"url":"/project/robot/start","method":"PATCH"}`, ErrMethodNotAllowed},
		{`{"url":"/project/robot/start","method":"POST","args":[1]}`, ErrInvalidArgs},
		{`{"url":"/project/robot/start","method":"POST","args":{"x":[1]}}`, ErrInvalidValue},
		{`{"url":"/project/robot/start","method":"POST","body":"{}"}`, ErrInvalidBody},
		{`{"url":"/project/robot/start","method":"POST","body":null}`, ErrInvalidBody},
		{`{"url":"/project/robot/start","method":"POST","body":1}`, ErrInvalidBody},
	} {
		c.send(`{"cmd":"CONTROL","payload":` + tc.payload + `}`)
		c.expectError(tc.code)
	}

	controlErr := func(payload string, status int) msg {
		t.Helper()
		c.send(`{"cmd":"CONTROL","payload":` + payload + `}`)
		m := c.expectType("control_err")
		if num(t, m.m["status"]) != float64(status) {
			t.Fatalf("want status %d: %s", status, m)
		}
		if _, ok := m.m["body"]; !ok {
			t.Fatalf("control_err without body: %s", m)
		}
		return m
	}
	if m := controlErr(`{"url":"/project/robot/nope","method":"POST","body":{}}`, 404); m.m["body"] != nil {
		t.Fatalf("404 body should be null: %s", m)
	}
	controlErr(`{"url":"/project/robot/joints/joint_states","method":"POST","body":{}}`, 405)
	controlErr(`{"url":"/project/robot/start","method":"PUT","body":{}}`, 405)
	controlErr(`{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":{"point":[1,2,3]}}`, 400)
	controlErr(`{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":[1,2,3,4,5,6]}`, 400)
	controlErr(`{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":{"point":[1,2,3,4,5,6],"interval":-1}}`, 400)

	// Motor off: start and trajectory points are refused; motor state is visible.
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_off","body":{}}}`)
	waitFor(t, s, "motor off", func() bool { return !s.MotorOn() })
	m := controlErr(`{"url":"/project/robot/start","method":"POST","body":{}}`, 409)
	if b := m.m["body"].(map[string]any); !strings.Contains(b["message"].(string), "motor") {
		t.Fatalf("409 body: %s", m)
	}
	controlErr(`{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":{"point":[1,2,3,4,5,6]}}`, 409)
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/start","body":{}}}`)
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/stop","body":{}}}`)
	c.expectSilence(100 * time.Millisecond)
	if !s.MotorOn() || s.Running() {
		t.Fatal("motor should be on and the robot stopped")
	}
	rec := s.Received()
	if last := rec[len(rec)-1]; last.Cmd != "CONTROL" || last.Err != "" {
		t.Fatalf("last record %+v", last)
	}
	var errs int
	for _, r := range rec {
		if r.Err == "control_err" {
			errs++
		}
	}
	if errs != 8 {
		t.Fatalf("%d control_err records, want 8", errs)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	for _, tc := range []struct{ payload, code string }{
		{`{}`, ErrMissingTarget},
		{`{"target":"all"}`, ErrInvalidTarget},
		{`{"target":1}`, ErrInvalidTarget},
		{`{"target":"monitor"}`, ErrNothingToStop},
		{`{"target":"control"}`, ErrNothingToStop},
	} {
		c.send(`{"cmd":"STOP","payload":` + tc.payload + `}`)
		c.expectError(tc.code)
	}

	c.monitor("/api/health", 5)
	c.expectData()
	c.cmd("STOP", map[string]any{"target": "monitor"})
	if m := c.expectType("stop_ack"); string(m.raw) != `{"type":"stop_ack","target":"monitor"}` {
		t.Fatal(m)
	}
	// No data after the ack.
	c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if line, err := c.r.Next(); err == nil {
		t.Fatalf("line after stop_ack: %s", line)
	}

	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
	c.cmd("STOP", map[string]any{"target": "control"})
	c.expectType("stop_ack")
	c.cmd("STOP", map[string]any{"target": "control"})
	c.expectError(ErrNothingToStop)

	c.monitor("/api/health", 5)
	c.cmd("STOP", map[string]any{"target": "session"})
	seen := c.expectClosed(2 * time.Second)
	var acked bool
	for _, m := range seen {
		if m.typ() == "stop_ack" && m.m["target"] == "session" {
			acked = true
		} else if acked {
			t.Fatalf("line after stop_ack session: %s", m)
		}
	}
	if !acked {
		t.Fatal("no stop_ack before close")
	}
	waitFor(t, s, "session gone", func() bool { return s.Active() == 0 })
}

func TestBusySessionActive(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, nil)
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 50)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	c.expectError(ErrBusySessionActive)
	c.cmd("STOP", map[string]any{"target": "monitor"})
	c.expectType("stop_ack")
	c.handshake()
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	c.expectError(ErrBusySessionActive)
	c.cmd("STOP", map[string]any{"target": "control"})
	c.expectType("stop_ack")
	c.handshake()
}

func TestReceivedAndConnections(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, func(c *Config) { c.RecordLimit = 3 })
	a := dial(t, addr)
	b := dial(t, addr)
	a.handshake()
	b.handshake()
	b.send(`{"cmd":"STOP","payload":{"target":"monitor"}}`)
	b.expectError(ErrNothingToStop)
	for i := 0; i < 5; i++ {
		a.send(`{"cmd":"NOPE","payload":{}}`)
		a.expectError(ErrInvalidCmd)
	}
	rec := s.Received()
	if len(rec) != 3 {
		t.Fatalf("record limit: %d", len(rec))
	}
	for _, r := range rec {
		if r.Cmd != "NOPE" || r.Err != ErrInvalidCmd || r.Conn != 1 || string(r.Raw) != `{"cmd":"NOPE","payload":{}}` || r.At.IsZero() {
			t.Fatalf("record %+v", r)
		}
	}
	if s.Connections() != 2 || s.Active() != 2 {
		t.Fatalf("connections %d active %d", s.Connections(), s.Active())
	}
	s.DropConnections()
	a.expectClosed(2 * time.Second)
	b.expectClosed(2 * time.Second)
	waitFor(t, s, "no sessions", func() bool { return s.Active() == 0 })
	dial(t, addr).handshake()
	if s.Connections() != 3 {
		t.Fatal(s.Connections())
	}
}

func TestStopSessionAfterClientHalfClose(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, nil)
	c := dial(t, addr)
	// Commands queued right before the client's FIN are still executed.
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}` + "\n" + `{"cmd":"STOP","payload":{"target":"session"}}`)
	c.conn.(interface{ CloseWrite() error }).CloseWrite()
	var types []string
	for _, m := range c.expectClosed(2 * time.Second) {
		types = append(types, m.typ())
	}
	if fmt.Sprint(types) != "[handshake_ack stop_ack]" {
		t.Fatal(types)
	}
	waitFor(t, s, "records", func() bool { return len(s.Received()) == 2 })
}
