package lasersell

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

func exitRequestFor(id uint64) func(map[string]any) bool {
	return func(b map[string]any) bool { return b["position_id"] == float64(id) }
}

// The deadline timer: armed when the deadline is set by update_strategy,
// cancelled by a close, fires once, is audited, and survives a restart
// because it is computed from the stored open time.
func TestDeadlineTimerFiresAndSurvivesRestart(t *testing.T) {
	s := startSim(t, sim.Config{})
	cfg := testConfig(s.URL())
	r := run(t, cfg, "")
	r.waitConnected()

	p1 := s.OpenPosition(walletA, mintA, 1_000_000)
	p2 := s.OpenPosition(walletA, mintA+"2", 1_000_000)
	for _, id := range []uint64{p1, p2} {
		ids := strconv.FormatUint(id, 10)
		connectortest.Eventually(t, wait, "positions tracked", func() bool { return r.position(ids) != nil })
	}
	// No deadline yet; setting one reschedules the open positions.
	r.mustOK(typeUpdateStrategy, `{"strategy":{"target_profit_pct":50},"deadline_timeout_sec":1}`)
	s.ClosePosition(p2, "stop_loss")

	f, _ := waitFrame(t, s, 1, typeRequestExitSignal, exitRequestFor(p1))
	opened := int64(r.position(strconv.FormatUint(p1, 10))["opened_at_ms"].(float64))
	if early := time.UnixMilli(opened).Add(time.Second).Sub(f.At); early > 50*time.Millisecond {
		t.Fatalf("deadline fired %s early", early)
	}
	audit := r.fetch(subjects.StreamAudit, "lasersell.t1.audit.request_exit_signal", 1)[0]
	var rec map[string]any
	_ = json.Unmarshal(audit.Data(), &rec)
	if rec["origin"] != "deadline" {
		t.Fatalf("audit record %s", audit.Data())
	}
	connectortest.Eventually(t, wait, "request recorded on the position", func() bool {
		p := r.position(strconv.FormatUint(p1, 10))
		return p != nil && p["deadline_requested_at_ms"] != nil
	})

	// Restart: a position opened just before the connector stops; its
	// deadline passes while nothing runs and the upstream refuses us.
	p3 := s.OpenPosition(walletA, mintA+"3", 1_000_000)
	p3s := strconv.FormatUint(p3, 10)
	connectortest.Eventually(t, wait, "p3 tracked", func() bool { return r.position(p3s) != nil })
	r.shutdown()
	s.SetRefuseStatus(http.StatusServiceUnavailable)
	r2 := run(t, cfg, r.env.StoreDir)
	// Loaded from KV while still disconnected.
	connectortest.Eventually(t, wait, "positions loaded from KV", func() bool {
		r2.src.mu.Lock()
		defer r2.src.mu.Unlock()
		return r2.src.positions[p3] != nil
	})
	time.Sleep(time.Until(time.UnixMilli(int64(r2.position(p3s)["opened_at_ms"].(float64))).Add(1100 * time.Millisecond)))
	s.SetRefuseStatus(0)
	reconnected := time.Now()
	f, _ = waitFrame(t, s, 2, typeRequestExitSignal, exitRequestFor(p3))
	if late := f.At.Sub(reconnected); late > 900*time.Millisecond {
		t.Fatalf("overdue deadline fired %s after reconnecting: it was rescheduled from the restart, not the stored open time", late)
	}
	// Once per position: p1's request is not repeated on the new connection.
	time.Sleep(100 * time.Millisecond)
	n := 0
	for _, f := range s.Received() {
		if f.Type == typeRequestExitSignal {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d request_exit_signal frames, want 2 (p1 once, p3 once; p2 closed)", n)
	}
}
