package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// With one of the three nodes down (the one that led the leases bucket, so
// the bucket went through an election first), the owner of both sessions is
// SIGKILLed: the standby takes them over within the lease TTL through the
// two surviving nodes, with a higher epoch; exits flow again and no exit is
// stored twice or out of order. The node's death itself moved no lease.
func TestClusterReplicaKilledWhileNodeDownIsTakenOver(t *testing.T) {
	const ttl = 15 * time.Second // the default: it outlasts the election the node's death causes
	r := startClusterRig(t, 300)
	a, b, _, httpB := r.startPair(t, map[string]string{"CONNECTOR_LEASE_TTL": ttl.String()})
	sessions := clusterSessions()
	before := r.waitLeases(t, 10*time.Second, sessions...)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	victim, err := r.c.KVLeader(ctx, subjects.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	r.c.Kill(victim)
	assets := append(append([]string{}, clusterHighStreams...), subjects.StreamLaserSellPnL, subjects.StreamOpenStreamData)
	for _, bucket := range []string{subjects.BucketDesired, subjects.BucketStatus, subjects.BucketLeases, subjects.BucketReplicas, subjects.BucketPositions} {
		assets = append(assets, "KV_"+bucket)
	}
	for _, asset := range assets {
		if _, err := r.c.WaitStreamLeader(ctx, asset, victim); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 30*time.Second, "both replicas' connections on the surviving nodes", func() error {
		for _, name := range []string{"connector high", "connector low"} {
			if nodes, err := r.c.ClientNodes(name); err != nil || len(nodes) != 2 {
				return fmt.Errorf("%q connections on %v %v", name, nodes, err)
			}
		}
		return nil
	})
	elected := time.Since(down)
	if now := r.waitLeases(t, 10*time.Second, sessions...); now[sessions[0]] != before[sessions[0]] || now[sessions[1]] != before[sessions[1]] {
		t.Fatalf("leases %v before n%d's death, %v after: ownership changed", before, victim, now)
	}

	// a works off what the election held up (on a loaded machine, seconds
	// of exits waiting in its socket) before it dies: what it has read or
	// still holds in its socket dies with it, and the upstream does not
	// send it again to the new owner.
	r.waitCaughtUp(t, catchUpWithin, 0)
	conns := r.ls.Connections()
	seq := lastSeq(r.js, subjects.StreamLaserSellExit)
	killed := time.Now()
	a.kill()
	cf := newUpstreamConfigure(t, r.ls, conns, ttl+15*time.Second, "b taking over after a's SIGKILL", func() error {
		if n := r.ls.ActiveSessions(); n != 1 {
			return fmt.Errorf("%d LaserSell sessions", n)
		}
		return nil
	})
	takeover := cf.At.Sub(killed)
	r.waitExitsAfter(t, seq, 0, 30*time.Second, "the first exit stored by b, with a node down")
	resumed := time.Since(killed)
	if takeover > ttl+2*time.Second {
		t.Errorf("takeover after SIGKILL took %v with a node down, want within the TTL %v + 2 s", takeover, ttl)
	}
	waitUntil(t, 20*time.Second, "b owning both sessions", func() error {
		return fleetSettled([]string{httpB}, sessions)
	})
	after := r.waitLeases(t, 10*time.Second, sessions...)
	for _, k := range sessions {
		if after[k].Replica != "b" || after[k].Epoch <= before[k].Epoch {
			t.Errorf("lease %s after the takeover: %+v (was %+v)", k, after[k], before[k])
		}
	}
	r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 10, 30*time.Second, "exits stored by b with a node down")
	r.c.Restart(victim)
	r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing after the node's restart")
	// Up to a second of exits may have died with a (read or in its socket,
	// not published).
	r.waitCaughtUp(t, catchUpWithin, 50)
	if err := b.stop(40 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*connectorProc{a, b} {
		p.checkNoRace()
	}
	exits := r.readClusterStream(t, subjects.StreamLaserSellExit)
	checkExitsOnceInOrder(t, exits)
	sent := r.ls.Stats().ExitSignalsSent
	if stored := uint64(len(exits)); stored > sent || sent-stored > 50 {
		t.Errorf("%d exits stored, %d sent: more than a second of exits lost with the killed owner", stored, sent)
	}
	logMeasured(t, "R3 cluster, n%d (leader of KV_%s) killed: every asset led elsewhere and both replicas reconnected after %v, no lease moved; "+
		"then the owner a SIGKILLed (lease TTL %v): b's configure at the upstream %v after the kill, first exit stored by b %v after the kill; leases %v -> %v; "+
		"exits sent %d, stored %d (%d in flight in the killed process), duplicates 0, out of order 0",
		victim, subjects.BucketLeases, elected.Round(time.Millisecond), ttl, takeover.Round(time.Millisecond), resumed.Round(time.Millisecond),
		before, after, sent, len(exits), sent-uint64(len(exits)))
}
