package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// The node the connector's high-lane connection is on dies (with whatever
// leaderships it held) while exits flow every 20 ms: both connections end up
// on the surviving nodes, the high lanes resume by themselves, and nothing
// they received is lost, stored twice or reordered; the leases keep their
// owner and epoch. The node then comes back on its store.
func TestClusterConnectedNodeDiesNothingHighLaneLost(t *testing.T) {
	r := startClusterRig(t, 500)
	p, _, before := r.startSolo(t)
	sessions := clusterSessions()

	// The connector names its connections "connector high" and "connector low".
	var highNodes, lowNodes []int
	waitUntil(t, 10*time.Second, "the connector's connections listed by the nodes", func() (err error) {
		if highNodes, err = r.c.ClientNodes("connector high"); err != nil {
			return err
		}
		if lowNodes, err = r.c.ClientNodes("connector low"); err != nil {
			return err
		}
		if len(highNodes) != 1 || len(lowNodes) != 1 {
			return fmt.Errorf("high on %v, low on %v", highNodes, lowNodes)
		}
		return nil
	})
	victim := highNodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	var led []string
	for _, asset := range append(slices.Clone(clusterHighStreams), "KV_"+subjects.BucketDesired, "KV_"+subjects.BucketLeases) {
		if l, err := r.c.StreamLeader(ctx, asset); err != nil {
			t.Fatal(err)
		} else if l == victim {
			led = append(led, asset)
		}
	}

	seq := lastSeq(r.js, subjects.StreamLaserSellExit)
	killed := time.Now()
	r.c.Kill(victim)
	var moved time.Duration
	waitUntil(t, 30*time.Second, "both connections on surviving nodes", func() error {
		high, err := r.c.ClientNodes("connector high")
		if err != nil {
			return err
		}
		low, err := r.c.ClientNodes("connector low")
		if err != nil {
			return err
		}
		if len(high) != 1 || len(low) != 1 {
			return fmt.Errorf("high on %v, low on %v", high, low)
		}
		moved = time.Since(killed)
		return nil
	})
	resumed := moved + r.waitExitsAfter(t, seq, 0, 30*time.Second, "the next exit stored after the node's death")
	r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing on two nodes")
	r.c.Restart(victim)
	// Stop only once exits flow again: a stop drains the lanes for at most
	// CONNECTOR_DRAIN_TIMEOUT.
	r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing after the node's restart")
	after := r.waitLeases(t, 10*time.Second, sessions...)
	r.waitCaughtUp(t, catchUpWithin, 0)
	if err := p.stop(40 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.checkNoRace()
	checkLeaseKept(t, p, len(sessions))
	for _, k := range sessions {
		if after[k] != before[k] {
			t.Errorf("lease %s: %+v before the node's death, %+v after: ownership changed", k, before[k], after[k])
		}
	}
	exits, perSession := r.checkHighLanes(t, clusterHighStreams...)
	r.checkAllExits(t, exits)
	logMeasured(t, "R3 cluster, the node of the connector's high-lane connection (n%d; low lane on n%d; leading %v) killed during exits every 20 ms and 500 PnL/s: "+
		"both connections on surviving nodes after %v, next exit stored after %v; exits sent %d, stored %d, duplicates 0, out of order 0; "+
		"high-lane messages per session %v, no Connector-Seq gap; leases %v kept",
		victim, lowNodes[0], led, moved.Round(time.Millisecond), resumed.Round(time.Millisecond), r.ls.Stats().ExitSignalsSent, len(exits), perSession, before)
}
