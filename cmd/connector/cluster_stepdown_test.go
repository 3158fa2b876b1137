package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// On the R3 cluster, the leader of each high-lane stream, then of the
// desired-state and leases buckets, steps down while exits flow every 20 ms
// and commands write to every one of them: nothing the high lanes received
// is lost, stored twice or reordered (Connector-Seq complete and in order
// in every stream), every exit the simulator sent is stored once and in
// order, each asset takes writes again through its new leader, the leases
// keep their owner and epoch (no ownership change), and the desired state
// written last is the one stored.
func TestClusterStepDownsKeepHighLanesAndLeases(t *testing.T) {
	r := startClusterRig(t, 500)
	p, httpAddr, before := r.startSolo(t)
	sessions := clusterSessions()
	drv := r.driveCommands(t, 100*time.Millisecond, true)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	assets := append(append([]string{}, clusterHighStreams...), "KV_"+subjects.BucketDesired, "KV_"+subjects.BucketLeases)
	var report []string
	for _, asset := range assets {
		seq := lastSeq(r.js, asset)
		start := time.Now()
		old, err := r.c.StreamLeader(ctx, asset)
		if err != nil {
			t.Fatal(err)
		}
		nl, err := r.c.StepDown(ctx, asset)
		if err != nil {
			t.Fatal(err)
		}
		elected := time.Since(start)
		// Lease renewals come every TTL/10 (1.5 s by default): the slowest.
		waitUntil(t, 15*time.Second, asset+" taking writes through its new leader", func() error {
			if n := lastSeq(r.js, asset); n <= seq {
				return fmt.Errorf("last seq %d", n)
			}
			return nil
		})
		report = append(report, fmt.Sprintf("%s n%d->n%d in %v, next write stored after %v",
			asset, old, nl, elected.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)))
		r.waitExitsAfter(t, lastSeq(r.js, subjects.StreamLaserSellExit), 5, 15*time.Second, "exits after the step-down of "+asset)
	}
	outcomes := drv.finish()

	// The last desired state written is the one stored.
	final := `{"strategy":{"target_profit_pct":9,"stop_loss_pct":1.25,"trailing_stop_pct":2}}`
	if reply := requestCommand(t, r.nc, subjects.Command(subjects.KindLaserSell, clusterSession, "update_strategy"), final, 10*time.Second); !reply.OK {
		t.Fatalf("update_strategy after the step-downs: %s", reply.raw)
	}
	desired, err := r.kvEntries(subjects.BucketDesired)
	if err != nil {
		t.Fatal(err)
	}
	if v := desired[subjects.SessionKey(subjects.KindLaserSell, clusterSession)+".configure"].Value; !strings.Contains(v, `"target_profit_pct":9`) || !strings.Contains(v, `"stop_loss_pct":1.25`) {
		t.Errorf("desired configure after the step-downs: %s", v)
	}
	after := r.waitLeases(t, 10*time.Second, sessions...)
	for _, k := range sessions {
		if after[k] != before[k] {
			t.Errorf("lease %s: %+v before the step-downs, %+v after: ownership changed", k, before[k], after[k])
		}
	}
	status, err := readFleetStatus(httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range status.Sessions {
		if want := before[subjects.SessionKey(s.Source, s.Session)]; s.Replica != want.Replica || s.Epoch != want.Epoch {
			t.Errorf("/status %s.%s: owner %s epoch %d, lease said %+v", s.Source, s.Session, s.Replica, s.Epoch, want)
		}
	}

	r.waitCaughtUp(t, catchUpWithin, 0)
	if err := p.stop(40 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.checkNoRace()
	checkLeaseKept(t, p, len(sessions))
	exits, perSession := r.checkHighLanes(t, clusterHighStreams...)
	r.checkAllExits(t, exits)
	for cmd, n := range outcomes {
		if !strings.HasSuffix(cmd, " ok") {
			t.Errorf("%d %s replies during the step-downs", n, cmd)
		}
	}
	logMeasured(t, "R3 cluster, step-downs during exits every 20 ms, 500 PnL/s, robot data every 20 ms and a command every 100 ms: %s; "+
		"exits sent %d, stored %d, duplicates 0, out of order 0; high-lane messages per session %v, no Connector-Seq gap; commands %v; leases %v kept",
		strings.Join(report, "; "), r.ls.Stats().ExitSignalsSent, len(exits), perSession, outcomes, before)
}
