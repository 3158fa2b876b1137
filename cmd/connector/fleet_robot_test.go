package main

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	ossim "github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

// The Open Stream side of the paused-owner test, as real processes: the
// owner of a robot (MONITOR streaming, a keepalive due every 100 ms, CONTROL
// requests arriving every 20 ms) is paused with SIGSTOP for 3 x TTL. The
// standby takes the robot over; resumed, the old owner writes nothing more
// on any of its old connections (no keepalive, no CONTROL from the requests
// it read before or during the pause), closes them, and refuses the CONTROL
// requests it still holds instead of forwarding them.
func TestFleetPausedRobotOwnerWritesNothingAfterResume(t *testing.T) {
	const robotName, ttl = "arm", 2 * time.Second
	nsrv, nc, _ := startTestNATS(t)
	rcfg := ossim.DefaultConfig()
	// The pause outlasts the armed watchdog's 5 s: with it the robot would
	// close the paused owner's monitor connection itself, and the test would
	// prove nothing about that connection.
	rcfg.ArmedTimeout = time.Minute
	robot := ossim.New(rcfg, zerolog.Nop())
	robotAddr, err := robot.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = robot.Close() })
	httpA, httpB := freeLoopbackAddr(t), freeLoopbackAddr(t)
	env := func(replica, httpAddr string) map[string]string {
		return map[string]string{
			"NATS_URL": nsrv.URL(), "CONNECTOR_HTTP_ADDR": httpAddr, "LOG_LEVEL": "info", "LOG_FORMAT": "json",
			"CONNECTOR_REPLICA": replica, "CONNECTOR_LEASE_TTL": ttl.String(), "CONNECTOR_SOURCES": "openstream",
			"CONNECTOR_COMMAND_TIMEOUT": "2s",
			"OPENSTREAM_ROBOTS":         robotName + "=" + robotAddr, "OPENSTREAM_BACKOFF_MAX": "300ms",
			"OPENSTREAM_MONITORS":      robotName + "/pose=/project/robot/po_cur@20ms",
			"OPENSTREAM_CONTROL_ALLOW": robotName + "=/project/robot/motor_on",
			// A keepalive every 100 ms: without the fence, the resumed
			// process would write one on its monitor connection at once.
			"OPENSTREAM_KEEPALIVE": "100ms",
		}
	}
	a := startConnectorProc(t, "a", env("a", httpA))
	waitUntil(t, 20*time.Second, "a streaming from the robot", func() error {
		for _, s := range robot.Sessions() {
			if s.Monitor != nil && s.DataLines > 0 {
				return nil
			}
		}
		return errors.New("no MONITOR streaming")
	})
	b := startConnectorProc(t, "b", env("b", httpB))
	waitStandby(t, httpB, "a")

	// CONTROL requests every 20 ms for the whole test, each remembered with
	// when it was sent and how it ended.
	type request struct {
		sent    time.Time
		outcome string
	}
	var (
		mu       sync.Mutex
		requests []request
	)
	stop := make(chan struct{})
	var driver sync.WaitGroup
	// Stopped below, or at cleanup when the test ends early.
	stopDriver := sync.OnceFunc(func() { close(stop); driver.Wait() })
	t.Cleanup(stopDriver)
	driver.Go(func() {
		subject := subjects.Command(subjects.KindOpenStream, robotName, "control")
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			sent := time.Now()
			k := replyOutcome(nc.Request(subject, []byte(`{"url":"/project/robot/motor_on","method":"POST"}`), 2*time.Second))
			mu.Lock()
			requests = append(requests, request{sent, k})
			mu.Unlock()
		}
	})
	waitUntil(t, 10*time.Second, "a CONTROL request answered ok by a", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range requests {
			if r.outcome == "ok" {
				return nil
			}
		}
		return fmt.Errorf("outcomes so far: %v", requests)
	})
	aConns := uint64(robot.Connections()) // every connection so far is a's

	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitUntil(t, ttl+5*time.Second, "b taking the robot over from the paused a", func() error {
		for _, s := range robot.Sessions() {
			if s.Conn > aConns && s.Monitor != nil {
				return nil
			}
		}
		return errors.New("no new MONITOR session")
	})
	takeover := time.Since(stopped)
	time.Sleep(3*ttl - takeover)
	resumed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "a's old connections closed", func() error {
		for _, s := range robot.Sessions() {
			if s.Conn <= aConns {
				return fmt.Errorf("a's connection %d still open", s.Conn)
			}
		}
		return nil
	})
	// Commands keep arriving for a while after the resume: a may get the
	// robot back (it is preferred) and then forwards them again, on new
	// connections.
	time.Sleep(500 * time.Millisecond)
	stopDriver()

	stale := 0
	for _, c := range robot.Received() {
		if c.Conn <= aConns && !c.At.Before(resumed) {
			stale++
			t.Errorf("a wrote %q on its old connection %d %v after resuming", c.Raw, c.Conn, c.At.Sub(resumed))
		}
	}
	// Once b runs the robot, every request is answered although the paused
	// a still holds its subscriptions: b gets each one too. One sent just
	// before the resume may be answered first by a, refusing it at its
	// fence (nothing forwarded).
	outcomes := map[string]int{}
	served, ok := 0, 0
	for _, r := range requests {
		outcomes[r.outcome]++
		if r.sent.After(stopped.Add(takeover+500*time.Millisecond)) && r.sent.Before(resumed) {
			served++
			switch r.outcome {
			case "ok":
				ok++
			case "shutting_down", "not_owner":
				if resumed.Sub(r.sent) > 300*time.Millisecond {
					t.Errorf("a CONTROL request sent %v before the resume, with b running the robot: %s", resumed.Sub(r.sent).Round(time.Millisecond), r.outcome)
				}
			default:
				t.Errorf("a CONTROL request sent %v after the pause began, with b running the robot: %s", r.sent.Sub(stopped).Round(time.Millisecond), r.outcome)
			}
		}
	}
	if served < 10 {
		t.Errorf("only %d CONTROL requests sent while b ran the robot and a was paused", served)
	}
	if err := b.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	a.checkNoRace()
	b.checkNoRace()
	if out := string(a.output()); !strings.Contains(out, "self-fencing") && !strings.Contains(out, `"reason_code":"fenced"`) &&
		!strings.Contains(out, "not_owner") {
		t.Errorf("a's log never says it fenced itself")
	}
	for k, n := range outcomes {
		switch k {
		case "ok", "not_owner", "no_responders", "not_connected", "shutting_down":
		case "error: " + nats.ErrTimeout.Error():
			// Sent to the paused a before its lease expired: unanswered.
		default:
			t.Errorf("a CONTROL request got %q (%d times)", k, n)
		}
	}
	logMeasured(t, "paused robot owner (SIGSTOP %v, lease TTL %v, keepalive due every 100 ms, CONTROL every 20 ms): "+
		"standby's MONITOR %v after the pause began; lines the resumed owner wrote on its old connections: %d; "+
		"CONTROL requests sent while b ran the robot and a was paused: %d, answered ok %d; all outcomes %v",
		(3 * ttl).Round(time.Millisecond), ttl, takeover.Round(time.Millisecond), stale, served, ok, outcomes)
}
