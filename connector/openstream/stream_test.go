package openstream

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

func TestMonitorStreamsDataVerbatim(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	f := start(t, s, robotConfig(s.Addr()), testConfig(), connectortest.Options{})
	f.waitData("joints", 20)

	msgs := f.env.Fetch(subjects.StreamOpenStreamData, f.subject("data", "joints"), 5, time.Second)
	for _, m := range msgs {
		var d struct {
			Type   string `json:"type"`
			Result struct {
				Position []float64 `json:"position"`
			} `json:"result"`
		}
		if err := json.Unmarshal(m.Data(), &d); err != nil || d.Type != "data" || len(d.Result.Position) != sim.Axes {
			t.Fatalf("data payload: %q (%v)", m.Data(), err)
		}
		if !bytes.HasPrefix(m.Data(), []byte(`{"type":"data","ts":`)) || bytes.HasSuffix(m.Data(), []byte("\n")) {
			t.Fatalf("payload is not the upstream line verbatim: %q", m.Data())
		}
		// Low-lane telemetry carries only Received and Seq (README, Headers).
		if h := m.Headers(); len(h) != 2 || h.Get(subjects.HeaderReceived) == "" || h.Get(subjects.HeaderSeq) == "" {
			t.Errorf("data headers: %v", h)
		}
	}
	if n := f.eventCount("handshake_ack", 2); n != 2 { // monitor and control connections
		t.Errorf("handshake_ack events: %d, want 2", n)
	}
	acks := f.events("monitor_ack")
	if n := len(acks); n != 1 {
		t.Fatalf("monitor_ack events: %d, want 1", n)
	}
	if h := acks[0].Headers(); h.Get(subjects.HeaderType) != "monitor_ack" || h.Get(subjects.HeaderUpstreamSession) != "monitor/joints#1" {
		t.Errorf("high-lane headers: %v", h)
	}
	f.waitStatus("streaming status", func(st map[string]any) bool { return isConn(st, StateStreaming, "monitor/joints") })
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	if s.Active() != 2 {
		t.Errorf("simulator sessions: %d, want 2 (one monitor, one control)", s.Active())
	}
}

func TestMonitorCommand(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	rc := robotConfig(s.Addr())
	rc.Monitors = nil
	f := start(t, s, rc, testConfig(), connectortest.Options{})

	// A new named monitor gets its own connection and answers after monitor_ack.
	r := f.mustOK("monitor", `{"name":"pose","url":"/project/robot/po_cur","period_ms":10,"args":{"crd":0}}`)
	if r.Raw["name"] != "pose" || r.Raw["period_ms"] != 10.0 || r.Raw["replaced"] != false {
		t.Errorf("reply: %v", r.Raw)
	}
	f.waitData("pose", 3)
	kv, err := f.robot.desiredKV.Get(t.Context(), "monitor.pose")
	if err != nil || !bytes.Contains(kv, []byte(`"url":"/project/robot/po_cur"`)) || !bytes.Contains(kv, []byte(`"args":{"crd":0}`)) {
		t.Fatalf("desired state in KV: %s %v", kv, err)
	}
	var args map[string]string
	for _, in := range s.Sessions() {
		if in.Monitor != nil {
			args = in.Monitor.Args
		}
	}
	if args["crd"] != "0" {
		t.Errorf("args did not reach the controller: %v", args)
	}

	// Default name, clamped period, replacing on the same connection.
	r = f.mustOK("monitor", `{"url":"/project/robot/joints/joint_states","period_ms":1}`)
	if r.Raw["name"] != DefaultMonitor || r.Raw["period_ms"] != 2.0 || r.Raw["clamped_from"] != 1.0 {
		t.Errorf("clamp reply: %v", r.Raw)
	}
	r = f.mustOK("monitor", `{"url":"/project/robot/joints/joint_states","period_ms":99999999999999999999,"method":"GET"}`)
	if r.Raw["period_ms"] != 30000.0 || r.Raw["replaced"] != true {
		t.Errorf("clamp reply: %v", r.Raw)
	}
	r = f.mustOK("monitor", `{"url":"/project/robot/joints/joint_states","period_ms":5}`)
	if r.Raw["replaced"] != true {
		t.Errorf("replace reply: %v", r.Raw)
	}
	f.waitData(DefaultMonitor, 5)
	waitSim(t, s, "two monitors, one control connection", func() bool { return monitorsActive(s) == 2 && s.Active() == 3 })

	// Refused before anything reaches the controller.
	before := len(received(s, "MONITOR"))
	for body, code := range map[string]string{
		`{"period_ms":5}`:                  "missing_url",
		`{"url":"relative","period_ms":5}`: "invalid_url",
		`{"url":"/a b","period_ms":5}`:     "invalid_url",
		`{"url":"/` + string(bytes.Repeat([]byte("a"), 2048)) + `","period_ms":5}`: "url_too_long",
		`{"url":"/a","period_ms":5,"method":"POST"}`:                               "invalid_method",
		`{"url":"/a"}`:                            "missing_period_ms",
		`{"url":"/a","period_ms":2.5}`:            "invalid_period",
		`{"url":"/a","period_ms":"5"}`:            "invalid_period",
		`{"url":"/a","period_ms":5,"args":[1]}`:   "invalid_args",
		`{"url":"/a","period_ms":5,"name":"a.b"}`: CodeInvalidName,
		`{"url":"/a","period_ms":5,"extra":1}`:    "invalid_json",
		`[1]`:                                     "invalid_json",
	} {
		f.mustRefuse("monitor", body, code)
	}
	if after := len(received(s, "MONITOR")); after != before {
		t.Errorf("refused monitor commands reached the controller: %d -> %d", before, after)
	}
}

// The controller refuses a replacement (monitor_already_active, a line
// without type): the reply carries its code, matched to the pending MONITOR,
// and the previous recipe stays desired.
func TestMonitorRefusedByControllerReverts(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.MonitorExclusive = true })
	f := start(t, s, robotConfig(s.Addr()), testConfig(), connectortest.Options{})
	f.waitData("joints", 3)
	f.mustRefuse("monitor", `{"name":"joints","url":"/project/robot/po_cur","period_ms":5}`, "monitor_already_active")
	kv, err := f.robot.desiredKV.Get(t.Context(), "monitor.joints")
	if err != nil || !bytes.Contains(kv, []byte(pathJoints)) {
		t.Fatalf("desired state not reverted: %s %v", kv, err)
	}
	if n := f.eventCount("error", 1); n == 0 {
		t.Errorf("the controller's error line was not published")
	}
	// A new name on its own connection is fine.
	f.mustOK("monitor", `{"name":"pose","url":"/project/robot/po_cur","period_ms":5}`)
	f.waitData("pose", 3)
}

// monitor_ack after the first data: the command still answers with the ack.
func TestAckAfterData(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.Faults.AckAfterData = true })
	rc := robotConfig(s.Addr())
	rc.Monitors = nil
	f := start(t, s, rc, testConfig(), connectortest.Options{})
	for i := range 3 {
		period := 5 + i
		r := f.mustOK("monitor", `{"name":"j","url":"/project/robot/joints/joint_states","period_ms":`+itoa(period)+`}`)
		if r.Raw["period_ms"] != float64(period) {
			t.Fatalf("reply %v", r.Raw)
		}
	}
	f.waitData("j", 3)
	if n := f.eventCount("monitor_ack", 3); n != 3 {
		t.Errorf("monitor_ack events: %d, want 3", n)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
