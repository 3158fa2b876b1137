package lasersell

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// outsider is a position of a wallet that is not in the configure, sent raw:
// nobody re-announces it, and reconciliation must leave it alone.
const outsider = `{"type":"position_opened","position_id":9001,"wallet_pubkey":"` + walletC + `","mint":"` + mintA + `","token_account":"TA9001","slot":1}`

// Positions closed while the connector was disconnected, or not running, are
// removed once the server has re-announced the open ones after reconnecting;
// their overdue deadline never fires. Positions of wallets outside the
// configure are kept; positions of wallets removed by update_wallets are
// dropped.
func TestStalePositionsAreReconciled(t *testing.T) {
	for _, mode := range []string{"disconnected", "restarted"} {
		t.Run(mode, func(t *testing.T) {
			s := startSim(t, sim.Config{})
			cfg := testConfig(s.URL())
			cfg.DeadlineTimeoutSec = 1
			r := run(t, cfg, "")
			r.waitConnected()
			p1 := s.OpenPosition(walletA, mintA, 1_000_000)
			p2 := s.OpenPosition(walletA, mintA+"2", 1_000_000)
			s.SendRaw([]byte(outsider))
			p1s, p2s := strconv.FormatUint(p1, 10), strconv.FormatUint(p2, 10)
			for _, id := range []string{p1s, p2s, "9001"} {
				connectortest.Eventually(t, wait, "position "+id+" in KV", func() bool { return r.position(id) != nil })
			}

			// p2 closes while the connector cannot see it; the deadlines pass.
			s.SetRefuseStatus(http.StatusServiceUnavailable)
			if mode == "restarted" {
				r.shutdown()
			} else {
				s.DropConnections()
			}
			connectortest.Eventually(t, wait, "no upstream session", func() bool { return s.ActiveSessions() == 0 })
			s.ClosePosition(p2, "stop_loss")
			opened := time.UnixMilli(int64(r.memPosition(p2).OpenedAtMS))
			time.Sleep(time.Until(opened.Add(1100 * time.Millisecond)))
			if mode == "restarted" {
				r = run(t, cfg, r.env.StoreDir)
			}
			s.SetRefuseStatus(0)

			// p1 is re-announced: confirmed open, its overdue deadline fires.
			waitFrame(t, s, 2, typeRequestExitSignal, exitRequestFor(p1))
			connectortest.Eventually(t, wait, "p2 removed from KV", func() bool { return r.position(p2s) == nil })
			if removed, _ := r.src.Reconciled(); removed != 1 {
				t.Fatalf("%d positions reconciled, want 1", removed)
			}
			if r.position(p1s) == nil || r.position("9001") == nil {
				t.Fatal("a re-announced position, or one of a wallet outside the configure, was removed")
			}
			for _, f := range s.Received() {
				if f.Type == typeRequestExitSignal && exitRequestFor(p2)(decode(t, f.Raw)) {
					t.Fatal("request_exit_signal sent for a position closed while disconnected")
				}
			}

			if mode == "disconnected" {
				// Wallet A leaves the configure: its positions are no longer tracked.
				r.mustOK(typeUpdateWallets, `{"wallet_pubkeys":["`+walletB+`"]}`)
				connectortest.Eventually(t, wait, "p1 removed with its wallet", func() bool { return r.position(p1s) == nil })
				if r.position("9001") == nil {
					t.Fatal("a position of a wallet that was never configured was removed")
				}
			}
		})
	}
}

// When the server sends an error after the configure (it may have refused
// it, and then re-announces nothing), nothing is removed; the next
// connection reconciles.
func TestReconcileSkippedAfterUpstreamError(t *testing.T) {
	// hello_ok after the configure: hello_ok proves the configure was read.
	s := startSim(t, sim.Config{HelloOrder: sim.HelloAfterConfigure, FirstSessionID: 1})
	cfg := testConfig(s.URL())
	cfg.ReconcileAfter = 300 * time.Millisecond
	r := run(t, cfg, "")
	r.waitConnected()
	p1 := s.OpenPosition(walletA, mintA, 1_000_000)
	p1s := strconv.FormatUint(p1, 10)
	connectortest.Eventually(t, wait, "p1 in KV", func() bool { return r.position(p1s) != nil })

	s.SetRefuseStatus(http.StatusServiceUnavailable)
	s.DropConnections()
	connectortest.Eventually(t, wait, "no upstream session", func() bool { return s.ActiveSessions() == 0 })
	s.ClosePosition(p1, "manual")
	s.SetRefuseStatus(0)
	connectortest.Eventually(t, wait, "second session", func() bool {
		st := r.status()
		return st != nil && st["state"] == "connected" && st["upstream_session"] == "2"
	})
	s.SendRaw([]byte(`{"type":"error","code":"invalid_configure","message":"refused"}`))
	connectortest.Eventually(t, wait, "reconciliation skipped", func() bool {
		_, skipped := r.src.Reconciled()
		return skipped == 1
	})
	if r.position(p1s) == nil {
		t.Fatal("a position was removed although the configure may have been refused")
	}

	s.DropConnections()
	connectortest.Eventually(t, wait, "p1 removed by the next connection", func() bool { return r.position(p1s) == nil })
}
