package lasersell

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// A session run under a lease (a fleet owner) whose lease can no longer be
// confirmed, as a process resumed after a pause finds it: the source writes
// nothing more on its connection and closes it (reason fenced), opens no new
// upstream session, and commands are refused with not_owner before reaching
// it; once the lease is confirmed again it reconnects. The status names the
// owner and the epoch.
func TestFencedSessionWritesNothingAndOpensNothing(t *testing.T) {
	srv := startSim(t, sim.Config{})
	cfg := testConfig(srv.URL())
	cfg.PingInterval = 20 * time.Millisecond // a write every 20 ms
	env := connectortest.Start(t, connectortest.Options{CommandTimeout: 5 * time.Second})
	env.Run()
	var fenced atomic.Bool
	fence := func() error {
		if fenced.Load() {
			return errors.New("lease not confirmed in time")
		}
		return nil
	}
	r := &rig{t: t, env: env}
	owner := connector.Owner{Replica: "r1", Epoch: 7}
	if err := env.Runtime.StartOwned(context.Background(), connectortest.Opened(NewSession(cfg), &r.src), owner, fence); err != nil {
		t.Fatal(err)
	}
	st := r.waitConnected()
	if st["replica"] != "r1" || st["epoch"] != float64(7) {
		t.Fatalf("status does not name the owner: %v", st)
	}
	r.mustOK("ping", `{}`)

	fenced.Store(true)
	connectortest.Eventually(t, wait, "the fenced connection closed", func() bool { return srv.ActiveSessions() == 0 })
	conns, frames := srv.Connections(), len(srv.Received())
	rep := r.request("ping", `{}`)
	if rep.OK || rep.Error == nil || rep.Error.Code != connector.CodeNotOwner {
		t.Fatalf("a command while fenced: %+v, want not_owner", rep)
	}
	connectortest.Eventually(t, wait, "a status with reason_code fenced", func() bool {
		det, _ := r.status()["detail"].(map[string]any)
		return det != nil && det["reason_code"] == connector.ReasonFenced
	})
	time.Sleep(300 * time.Millisecond) // 15 ping intervals, many backoffs
	if n := srv.Connections(); n != conns {
		t.Fatalf("%d upstream sessions opened while fenced", n-conns)
	}
	if n := len(srv.Received()); n != frames {
		t.Fatalf("%d frames written while fenced: %v", n-frames, srv.Received()[frames:])
	}
	if got := env.MetricWhere("connector_upstream_reconnects_total", map[string]string{"reason": connector.ReasonFenced}); got < 1 {
		t.Fatalf("reconnects{reason=fenced} = %v", got)
	}

	fenced.Store(false)
	connectortest.Eventually(t, wait, "reconnected once the lease is confirmed", func() bool { return srv.ActiveSessions() == 1 })
	r.waitConnected()
	r.mustOK("ping", `{}`)
}
