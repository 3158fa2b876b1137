package openstream

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

func TestControlAllowListAndValidation(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	f := start(t, s, robotConfig(s.Addr()), testConfig(), connectortest.Options{})
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })

	for body, code := range map[string]string{
		`{"url":"/project/robot/motor_off","method":"POST","body":{}}`:                                 CodeControlNotAllowed,
		`{"url":"/project/robot/trajectory/../motor_off","method":"POST"}`:                             "invalid_url",
		`{"url":"/project/robot/trajectory//x","method":"POST"}`:                                       "invalid_url",
		`{"url":"/project/robot/trajectory/x?a=1","method":"POST"}`:                                    "invalid_url",
		`{"url":"/project/robot/trajectory/%2e%2e","method":"POST"}`:                                   "invalid_url",
		`{"url":"/project/robot/trajectory/a/b","method":"POST"}`:                                      CodeControlNotAllowed,
		`{"url":"/project/robot/motor_on","method":"GET"}`:                                             "invalid_method",
		`{"url":"/project/robot/motor_on"}`:                                                            "missing_method",
		`{"method":"POST"}`:                                                                            "missing_url",
		`{"url":"/project/robot/motor_on","method":"POST","body":"x"}`:                                 "invalid_body",
		`{"url":"/project/robot/motor_on","method":"POST","args":[1]}`:                                 "invalid_args",
		`{"url":"/project/robot/motor_on","method":"POST","cmd":"STOP"}`:                               "invalid_json",
		"{\"url\":\"/project/robot/motor_on\",\"method\":\"POST\"}\n{\"url\":\"/project/robot/stop\"}": "invalid_json",
	} {
		f.mustRefuse("control", body, code)
	}
	if n := len(received(s, "CONTROL")); n != 0 {
		t.Fatalf("refused CONTROL reached the controller: %d lines", n)
	}

	// Allowed: written, no control_err within the window. Newlines in the
	// request (JSON whitespace, escaped in strings) cannot split the line.
	r := f.mustOK("control", "{\"url\":\"/project/robot/motor_on\",\n\"method\":\"POST\",\"body\":{\n\"note\":\"a\\nb\"}}")
	if r.Raw["written"] != true || r.Raw["window_ms"] != 100.0 {
		t.Errorf("reply: %v", r.Raw)
	}
	got := received(s, "CONTROL")
	if len(got) != 1 || string(got[0].Raw) != `{"cmd":"CONTROL","payload":{"url":"/project/robot/motor_on","method":"POST","body":{"note":"a\nb"}}}` {
		t.Fatalf("controller received %d CONTROL lines: %v", len(got), got)
	}

	// control_err within the window is the reply (a 400 from the REST call).
	f.mustRefuse("control", `{"url":"`+pathInsert+`","method":"POST","body":{"point":[1,2,3]}}`, "control_err")
	// The event is published by the high lane independently of the reply.
	if n := f.eventCount("control_err", 1); n != 1 {
		t.Errorf("control_err events: %d", n)
	}

	// Audit: every command is recorded, refused or not.
	audits := f.env.WaitCount(subjects.StreamAudit, f.subject("audit", "control"), 15, waitLong)
	if audits < 15 {
		t.Errorf("audit records: %d", audits)
	}
}

func TestControlDisabledAndBusy(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.Faults.ControlBusy = true })
	rc := robotConfig(s.Addr())
	rc.ControlAllow = nil
	f := start(t, s, rc, testConfig(), connectortest.Options{})
	f.mustRefuse("control", `{"url":"/project/robot/motor_on","method":"POST"}`, CodeControlDisabled)
	f.mustRefuse("stop", `{"target":"control"}`, CodeControlDisabled)
	f.waitData("joints", 2)
	if s.Active() != 1 {
		t.Errorf("a robot without CONTROL must not open a control connection: %d sessions", s.Active())
	}

	s2 := startSim(t, func(c *sim.Config) { c.Faults.ControlBusy = true })
	f2 := start(t, s2, robotConfig(s2.Addr()), testConfig(), connectortest.Options{})
	f2.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	// control_busy is a line without type: matched to the CONTROL in its window.
	f2.mustRefuse("control", `{"url":"/project/robot/motor_on","method":"POST","body":{}}`, "control_busy")
}

// Trajectory points streamed as plain publishes (no reply, 500 Hz style) move
// the arm; the move is visible in the MONITOR data, and every point is audited.
func TestControlTrajectoryVisibleInMonitor(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	f := start(t, s, robotConfig(s.Addr()), testConfig(), connectortest.Options{})
	f.waitData("joints", 2)
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	f.mustOK("control", `{"url":"/project/robot/trajectory/joint_traject_init","method":"POST","body":{}}`)

	const points = 200
	home := sim.Home()
	target := home
	target[0] = 30
	subj := f.subject("cmd", "control")
	for i := 1; i <= points; i++ {
		p := home
		p[0] = home[0] + (target[0]-home[0])*float64(i)/points
		body := fmt.Sprintf(`{"url":%q,"method":"POST","body":{"interval":0.002,"time_from_start":-1,"look_ahead_time":0.004,"point":%s}}`,
			pathInsert, mustJSON(p[:]))
		if err := f.env.Conn.Publish(subj, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	waitSim(t, s, "all points inserted", func() bool { return s.TrajectoryPoints() == points })
	waitSim(t, s, "arm at target", func() bool { return math.Abs(s.Joints()[0]-target[0]) < 1e-6 })

	// The MONITOR data shows the new position.
	connectortest.Eventually(t, waitLong, "monitor data at the target", func() bool {
		n := f.dataCount("joints")
		msgs := f.env.Fetch(subjects.StreamOpenStreamData, f.subject("data", "joints"), int(n), time.Second)
		for i := len(msgs) - 1; i >= 0 && i >= len(msgs)-5; i-- {
			var d struct {
				Result struct {
					Position []float64 `json:"position"`
				} `json:"result"`
			}
			if json.Unmarshal(msgs[i].Data(), &d) == nil && len(d.Result.Position) > 0 && math.Abs(d.Result.Position[0]-target[0]) < 1e-3 {
				return true
			}
		}
		return false
	})

	// Every no-reply CONTROL is audited, with wants_reply false.
	got := f.env.WaitCount(subjects.StreamAudit, f.subject("audit", "control"), points+1, waitLong)
	if got != points+1 {
		t.Fatalf("audit records: %d, want %d", got, points+1)
	}
	last := f.env.Fetch(subjects.StreamAudit, f.subject("audit", "control"), points+1, time.Second)
	var rec struct {
		WantsReply bool            `json:"wants_reply"`
		Reply      json.RawMessage `json:"reply"`
	}
	if err := json.Unmarshal(last[len(last)-1].Data(), &rec); err != nil || rec.WantsReply || !strings.Contains(string(rec.Reply), `"queued":true`) {
		t.Errorf("audit record: %s", last[len(last)-1].Data())
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
