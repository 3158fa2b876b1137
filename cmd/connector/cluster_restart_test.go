package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// The whole cluster dies at once and comes back on its stores while a fleet
// of two replicas runs the LaserSell session and a robot: the desired state
// (set by commands, not the environment) comes back unchanged, the leases
// come back with their owners and epochs (the outage is shorter than the
// lease TTL less its fencing margin), the replicas report NATS down and
// then ready again, and the fleet resumes by itself: every session owned
// once, exits stored again, every exit the simulator sent stored once and
// in order.
func TestClusterWholeRestartKeepsDesiredStateAndLeases(t *testing.T) {
	// The TTL must outlast the whole outage plus the cluster's elections
	// (here 5-13 s from the kill to the first write); 15 s, the default,
	// fences a replica 11.25 s after its last renewal.
	const ttl = 30 * time.Second
	r := startClusterRig(t, 300)
	a, b, httpA, httpB := r.startPair(t, map[string]string{"CONNECTOR_LEASE_TTL": ttl.String(), "CONNECTOR_ACK_TIMEOUT": "2s"})
	sessions := clusterSessions()

	// Desired state from commands: it is what must come back, not the seed.
	for subject, body := range map[string]string{
		subjects.Command(subjects.KindLaserSell, clusterSession, "update_strategy"): `{"strategy":{"target_profit_pct":7,"stop_loss_pct":1.75,"trailing_stop_pct":2.5}}`,
		subjects.Command(subjects.KindOpenStream, clusterRobot, "monitor"):          fmt.Sprintf(`{"name":%q,"url":"/project/robot/po_cur","period_ms":33}`, clusterMonitor),
	} {
		if reply := requestCommand(t, r.nc, subject, body, 10*time.Second); !reply.OK {
			t.Fatalf("%s: %s", subject, reply.raw)
		}
	}
	desired, err := r.kvEntries(subjects.BucketDesired)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"lasersell.cluster.configure", "openstream.arm.monitor.pose"} {
		if !strings.Contains(desired[k].Value, `"origin":"command:`) {
			t.Fatalf("desired %s is not the command's: %q", k, desired[k].Value)
		}
	}
	leases := r.waitLeases(t, 10*time.Second, sessions...)

	seq := lastSeq(r.js, subjects.StreamLaserSellExit)
	killed := time.Now()
	r.c.KillAll()
	for _, addr := range []string{httpA, httpB} {
		waitUntil(t, 10*time.Second, addr+" /readyz reporting NATS down", func() error {
			body, err := httpBody("http://" + addr + "/readyz")
			if err != nil {
				return err
			}
			if !strings.Contains(string(body), `"check": "nats"`) {
				return fmt.Errorf("readyz %s", body)
			}
			return nil
		})
	}
	r.c.RestartAll()
	formed := time.Since(killed)
	resumed := time.Since(killed) + r.waitExitsAfter(t, seq, 0, 30*time.Second, "the next exit stored after the whole restart")
	waitUntil(t, 30*time.Second, "every session owned once and both replicas ready", func() error {
		if err := fleetSettled([]string{httpA, httpB}, sessions); err != nil {
			return err
		}
		for _, addr := range []string{httpA, httpB} {
			if body, err := httpBody("http://" + addr + "/readyz"); err != nil || !strings.Contains(string(body), `"ready": true`) {
				return fmt.Errorf("%s /readyz: %s %v", addr, body, err)
			}
		}
		return nil
	})
	ready := time.Since(killed)
	// The desired-state bucket may still be electing its leader or catching
	// up after the restart (one read timed out at 5 s in CI): read until it
	// answers, then compare.
	var after map[string]kvEntry
	waitUntil(t, 30*time.Second, "the desired-state bucket readable after the whole restart", func() error {
		var err error
		after, err = r.kvEntries(subjects.BucketDesired)
		return err
	})
	if !maps.Equal(after, desired) {
		t.Errorf("desired state before the whole restart:\n%v\nafter:\n%v", desired, after)
	}
	if got := r.waitLeases(t, 10*time.Second, sessions...); !maps.Equal(got, leases) {
		t.Errorf("leases before the whole restart %v, after %v: ownership changed", leases, got)
	}
	r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing after the whole restart")

	r.waitCaughtUp(t, catchUpWithin, 0)
	for _, p := range []*connectorProc{a, b} {
		if err := p.stop(40 * time.Second); err != nil {
			t.Fatal(err)
		}
		p.checkNoRace()
		if out := string(p.output()); strings.Contains(out, "self-fencing") || strings.Contains(out, "lease lost") {
			t.Errorf("replica %s lost or could not confirm a lease during the whole restart", p.name)
		}
	}
	exits := r.readClusterStream(t, subjects.StreamLaserSellExit)
	r.checkAllExits(t, exits)
	logMeasured(t, "R3 cluster, all three nodes killed at once and restarted on their stores under a fleet of 2 (lease TTL %v), exits every 20 ms: "+
		"cluster formed again %v after the kill, next exit stored after %v, both replicas ready and every session owned after %v; "+
		"desired state (%d keys) unchanged, leases %v kept; exits sent %d, stored %d, duplicates 0, out of order 0",
		ttl, formed.Round(time.Millisecond), resumed.Round(time.Millisecond), ready.Round(time.Millisecond),
		len(after), leases, r.ls.Stats().ExitSignalsSent, len(exits))
}

// fleetSettled says why the replicas serving HTTP on addrs do not yet run
// every one of sessions exactly once, each on the replica every one of them
// sees as its preferred (so that nothing is about to move).
func fleetSettled(addrs []string, sessions []string) error {
	owners := map[string][]string{}
	for _, addr := range addrs {
		st, err := readFleetStatus(addr)
		if err != nil {
			return err
		}
		for _, s := range st.Sessions {
			owners[subjects.SessionKey(s.Source, s.Session)] = append(owners[subjects.SessionKey(s.Source, s.Session)], st.Replica)
		}
		for _, l := range st.Leases {
			if l.Replica == "" || l.Replica != l.Preferred {
				return fmt.Errorf("%s sees lease %s: %+v", st.Replica, l.Session, l)
			}
		}
	}
	if n := len(owners); n == 0 {
		return errors.New("no session run")
	}
	for _, k := range sessions {
		if len(owners[k]) != 1 {
			return fmt.Errorf("session %s run by %v", k, owners[k])
		}
	}
	if len(owners) != len(sessions) {
		return fmt.Errorf("sessions run: %v, want %v", slices.Sorted(maps.Keys(owners)), sessions)
	}
	return nil
}
