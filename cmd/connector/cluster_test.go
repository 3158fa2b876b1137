package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// On a three-node JetStream cluster with every stream and bucket replicated
// three times, the node leading LASERSELL_EXIT is killed during an exit
// stream and a PnL flood, and later restarted on its store; then the node
// leading the leases bucket: every exit the simulator sent is stored exactly
// once and in order per position, the high lane resumes by itself once a new
// leader answers, and the lease does not change owner (an election is
// shorter than the lease TTL less its margin).
func TestClusterStreamLeaderKillKeepsExitsOnce(t *testing.T) {
	r := startClusterRig(t, 2000)
	c, js := r.c, r.js
	httpAddr := freeLoopbackAddr(t)
	p := startConnectorProc(t, "solo", r.env("solo", httpAddr, false))
	r.waitExitsAfter(t, 0, 30, 60*time.Second, "exit signals stored on the cluster")
	lease := subjects.SessionKey(subjects.KindLaserSell, clusterSession)
	before, err := readFleetStatus(httpAddr)
	if err != nil || len(before.Sessions) != 1 {
		t.Fatalf("status: %+v %v", before, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := c.StreamLeader(ctx, subjects.StreamLaserSellExit)
	if err != nil {
		t.Fatal(err)
	}
	seqBefore := lastSeq(js, subjects.StreamLaserSellExit)
	killed := time.Now()
	c.Kill(leader)
	r.waitExitsAfter(t, seqBefore, 0, 30*time.Second, "the next exit stored after the leader kill")
	resumed := time.Since(killed)
	r.waitExitsAfter(t, lastSeq(js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing through the new leader")
	c.Restart(leader)
	r.waitExitsAfter(t, lastSeq(js, subjects.StreamLaserSellExit), 20, 30*time.Second, "exits flowing after the restart")

	// Then the node leading the leases bucket: renewals fail for the length
	// of the election, which is shorter than the TTL less its margin.
	leasesLeader, err := c.KVLeader(ctx, subjects.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	leasesKilled := time.Now()
	c.Kill(leasesLeader)
	if _, err := c.WaitStreamLeader(ctx, "KV_"+subjects.BucketLeases, leasesLeader); err != nil {
		t.Fatal(err)
	}
	leasesElected := time.Since(leasesKilled)
	r.waitExitsAfter(t, lastSeq(js, subjects.StreamLaserSellExit), 10, 30*time.Second, "exits still stored after the leases leader's kill")
	c.Restart(leasesLeader)
	// Stop only once exits flow again: a graceful stop drains the lanes for
	// CONNECTOR_DRAIN_TIMEOUT, and what a still-electing cluster does not
	// acknowledge by then is abandoned (counted as failed).
	r.waitExitsAfter(t, lastSeq(js, subjects.StreamLaserSellExit), 10, 60*time.Second, "exits stored after the restart")
	// The flood ends first: on a loaded machine, 2,000 PnL/s on the same
	// socket can keep the reader from ever catching up with the backlog.
	r.ls.SetPnLRate(0)
	caughtUp := r.waitCaughtUp(t, 60*time.Second, 0)
	if l := r.waitLeases(t, 10*time.Second, lease); l[lease].Epoch != before.Sessions[0].Epoch || l[lease].Replica != "solo" {
		t.Errorf("lease after the kills %+v, epoch %d before: ownership changed", l[lease], before.Sessions[0].Epoch)
	}
	if err := p.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.checkNoRace()
	sent := r.ls.Stats().ExitSignalsSent
	// The lease never changed hands: one acquisition in the whole run, so
	// one incarnation of the session and one Connector-Seq numbering.
	checkLeaseKept(t, p, 1)
	exits, _ := r.checkHighLanes(t, laserSellHighStreams...)
	r.checkAllExits(t, exits)
	logMeasured(t, "R3 cluster, leader n%d of %s killed during exits every 20 ms and 2,000 PnL/s: next exit stored %v after the kill; "+
		"then leader n%d of KV_%s killed: new leader after %v, no lease change; exits sent %d, stored %d, duplicates 0, out of order 0; lease epoch %d kept; backlog cleared %v after the flood ended",
		leader, subjects.StreamLaserSellExit, resumed.Round(time.Millisecond), leasesLeader, subjects.BucketLeases, leasesElected.Round(time.Millisecond),
		sent, len(exits), before.Sessions[0].Epoch, caughtUp.Round(time.Millisecond))
}

// readStreamDirect reads a stream by sequence; on a cluster whose leaders
// may still be settling the caller retries on an error.
func readStreamDirect(js jetstream.JetStream, stream string) ([]storedMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info := s.CachedInfo()
	var out []storedMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			return nil, fmt.Errorf("seq %d: %w", seq, err)
		}
		out = append(out, storedMsg{Stream: stream, Seq: seq, Subject: m.Subject, Header: m.Header, Data: m.Data})
	}
	return out, nil
}

// A replica count a single (not clustered) server cannot hold stops the
// connector at start with one line naming the variable, instead of retrying
// forever.
func TestReplicasBeyondTheServerNameTheVariable(t *testing.T) {
	nsrv, _, _ := startTestNATS(t)
	for variable, want := range map[string]string{
		"STREAM_LASERSELL_EXIT_REPLICAS": "STREAM_LASERSELL_EXIT_REPLICAS=3: the NATS server is not clustered",
		"CONNECTOR_KV_REPLICAS":          "CONNECTOR_KV_REPLICAS=3: the NATS server is not clustered",
	} {
		p := startConnectorProc(t, variable, map[string]string{
			"NATS_URL": nsrv.URL(), "CONNECTOR_HTTP_ADDR": "", "LOG_FORMAT": "json", variable: "3",
			"LASERSELL_URL": "ws://127.0.0.1:1/v1/ws", "LASERSELL_API_KEY": "k", "LASERSELL_WALLETS": "W1", "LASERSELL_STOP_LOSS_PCT": "3",
		})
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s=3 on a single server: the connector is still running after 20 s", variable)
		}
		if out := string(p.output()); !strings.Contains(out, want) {
			t.Errorf("%s=3: the output does not say %q:\n%s", variable, want, out)
		}
	}
}
