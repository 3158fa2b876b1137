package openstream

import (
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/sim"
)

func TestStopCommands(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	rc := robotConfig(s.Addr())
	rc.Monitors["pose"] = Recipe{URL: "/project/robot/po_cur", Method: "GET", PeriodMS: 5}
	f := start(t, s, rc, testConfig(), connectortest.Options{})
	f.waitData("joints", 2)
	f.waitData("pose", 2)
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })

	f.mustRefuse("stop", `{}`, "missing_target")
	f.mustRefuse("stop", `{"target":"everything"}`, "invalid_target")
	f.mustRefuse("stop", `{"target":"monitor","name":"nope"}`, CodeUnknownMonitor)
	f.mustRefuse("stop", `{"target":"control","name":"x"}`, "invalid_value")

	// STOP control with nothing active: the controller's nothing_to_stop is
	// ignorable, so the reply is ok and says so.
	r := f.mustOK("stop", `{"target":"control"}`)
	if r.Raw["nothing_to_stop"] != true || r.Raw["acked"] != false {
		t.Errorf("stop control: %v", r.Raw)
	}
	// After a CONTROL, STOP control is acknowledged.
	f.mustOK("control", `{"url":"/project/robot/motor_on","method":"POST","body":{}}`)
	r = f.mustOK("stop", `{"target":"control"}`)
	if r.Raw["acked"] != true {
		t.Errorf("stop control after CONTROL: %v", r.Raw)
	}

	// STOP monitor: acked, removed from the desired state, its connection closed.
	r = f.mustOK("stop", `{"target":"monitor","name":"pose"}`)
	if r.Raw["acked"] != true || r.Raw["name"] != "pose" {
		t.Errorf("stop monitor: %v", r.Raw)
	}
	if _, err := f.robot.desiredKV.Get(t.Context(), "monitor.pose"); !errors.Is(err, connector.ErrNotFound) {
		t.Errorf("monitor.pose still desired: %v", err)
	}
	waitSim(t, s, "pose connection closed", func() bool { return s.Active() == 2 && monitorsActive(s) == 1 })
	f.waitStatus("pose stopped", func(st map[string]any) bool { return isConn(st, "stopped", "monitor/pose") })
	// Lines read before the stop may still be on their way through the low
	// lane: wait for the stored count to settle, then check it stays.
	n := f.dataCount("pose")
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		m := f.dataCount("pose")
		if m == n {
			break
		}
		n = m
	}
	time.Sleep(200 * time.Millisecond)
	if f.dataCount("pose") != n {
		t.Errorf("pose data still flowing after STOP monitor")
	}
	f.mustRefuse("stop", `{"target":"monitor","name":"pose"}`, CodeUnknownMonitor)

	// STOP session: every connection stops (stop_ack each), the robot stays
	// idle, CONTROL is refused, a monitor command resumes.
	r = f.mustOK("stop", `{"target":"session"}`)
	conns, _ := r.Raw["connections"].(map[string]any)
	if r.Raw["acked"] != true || conns["control"] != "stop_ack" || conns["monitor/joints"] != "stop_ack" {
		t.Errorf("stop session: %v", r.Raw)
	}
	waitSim(t, s, "all sessions closed", func() bool { return s.Active() == 0 })
	f.waitStatus("robot stopped", func(st map[string]any) bool {
		return st["state"] == "stopped" && strings.Contains(st["reason"].(string), "STOP session")
	})
	f.mustRefuse("control", `{"url":"/project/robot/motor_on","method":"POST"}`, CodeSessionStopped)
	stopped := f.dataCount("joints")
	time.Sleep(50 * time.Millisecond)
	if f.dataCount("joints") != stopped {
		t.Errorf("data still flowing after STOP session")
	}
	if _, err := f.robot.desiredKV.Get(t.Context(), "monitor.joints"); err != nil {
		t.Errorf("STOP session must keep the desired monitors: %v", err)
	}

	f.mustOK("monitor", `{"name":"pose","url":"/project/robot/po_cur","period_ms":5}`)
	f.waitData("joints", stopped+3) // resumed with the other desired monitor
	f.waitData("pose", n+3)
	waitSim(t, s, "resumed connections", func() bool { return s.Active() == 3 })
	f.waitStatus("control reconnected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	f.mustOK("control", `{"url":"/project/robot/motor_on","method":"POST","body":{}}`)
}

// stop_failed (a line without type) answers the STOP and needs a reconnect.
func TestStopFailed(t *testing.T) {
	t.Parallel()
	s := startSim(t, func(c *sim.Config) { c.Faults.StopFailed = true })
	cfg := testConfig()
	cfg.Keepalive = 0 // keepalives are STOPs too
	f := start(t, s, robotConfig(s.Addr()), cfg, connectortest.Options{})
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	f.mustRefuse("stop", `{"target":"control"}`, "stop_failed")
	f.waitStatus("control reconnecting after stop_failed", func(st map[string]any) bool {
		return isConn(st, "reconnecting", "control") && st["reason"] == "stop_failed"
	})
}

// Shutdown sends STOP session on every connection and waits for stop_ack,
// and leaves no goroutine behind. Not parallel: it inspects all goroutines.
func TestGracefulShutdownSendsStopSession(t *testing.T) {
	s := startSim(t, nil)
	f := start(t, s, robotConfig(s.Addr()), testConfig(), connectortest.Options{})
	f.waitData("joints", 2)
	f.waitStatus("control connected", func(st map[string]any) bool { return isConn(st, "connected", "control") })
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "connector/openstream.(*") {
		t.Errorf("goroutines left after Run returned:\n%s", stacks)
	}
	var stops []uint64
	for _, c := range received(s, "STOP") {
		var cmd struct {
			Payload struct {
				Target string `json:"target"`
			} `json:"payload"`
		}
		_ = json.Unmarshal(c.Raw, &cmd)
		if cmd.Payload.Target == "session" {
			stops = append(stops, c.Conn)
			if c.Err != "" {
				t.Errorf("STOP session answered %s", c.Err)
			}
		}
	}
	if len(stops) != 2 || stops[0] == stops[1] {
		t.Fatalf("STOP session on connections %v, want one on each of 2", stops)
	}
	waitSim(t, s, "sessions closed", func() bool { return s.Active() == 0 })
	if n := f.eventCount("stop_ack", 2); n != 2 {
		t.Errorf("stop_ack events: %d, want 2", n)
	}
	last := f.statuses()
	if st := last[len(last)-1]; st["state"] != "stopped" || st["reason"] != "shutdown" {
		t.Errorf("last status: %v", st)
	}
}

// Desired monitors live in KV: after a restart on the same store, commands
// made before win over the configuration.
func TestDesiredMonitorsSurviveRestart(t *testing.T) {
	t.Parallel()
	s := startSim(t, nil)
	dir := t.TempDir()
	rc := robotConfig(s.Addr())
	f := start(t, s, rc, testConfig(), connectortest.Options{StoreDir: dir})
	f.waitData("joints", 2)
	f.mustOK("monitor", `{"name":"pose","url":"/project/robot/po_cur","period_ms":7}`)
	f.mustOK("stop", `{"target":"monitor","name":"joints"}`)
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	f.env.Server.Stop()
	waitSim(t, s, "sessions closed", func() bool { return s.Active() == 0 })

	f2 := start(t, s, rc, testConfig(), connectortest.Options{StoreDir: dir})
	poses := f2.dataCount("pose")
	f2.waitData("pose", poses+3)
	waitSim(t, s, "one monitor", func() bool { return monitorsActive(s) == 1 })
	for _, in := range s.Sessions() {
		if in.Monitor != nil && (in.Monitor.URL != "/project/robot/po_cur" || in.Monitor.PeriodMS != 7) {
			t.Errorf("restored monitor: %+v", in.Monitor)
		}
	}
	joints := f2.dataCount("joints")
	time.Sleep(50 * time.Millisecond)
	if f2.dataCount("joints") != joints {
		t.Errorf("the stopped monitor came back from the configuration")
	}
}
