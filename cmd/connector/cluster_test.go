package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/internal/natscluster"
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
	const session = "cluster"
	c := natscluster.Start(t, natscluster.Options{})
	lcfg := lssim.DefaultConfig()
	lcfg.APIKey = "cluster-test-key"
	lcfg.AutoPositions = 2
	lcfg.ExitEvery = 20 * time.Millisecond
	lcfg.OpenEvery = 50 * time.Millisecond
	lcfg.PnLRate = 2000
	lcfg.EnforceSessionLimit = false
	ls, lsURL, _, _ := startSims(t, lcfg)
	httpAddr := freeLoopbackAddr(t)
	env := map[string]string{
		"NATS_URL": c.URLs(), "CONNECTOR_HTTP_ADDR": httpAddr, "LOG_LEVEL": "warn", "LOG_FORMAT": "json",
		"CONNECTOR_REPLICA": "solo", "CONNECTOR_KV_REPLICAS": "3", "CONNECTOR_SOURCES": "lasersell",
		"CONNECTOR_DRAIN_TIMEOUT": "30s",
		"LASERSELL_URL":           lsURL, "LASERSELL_API_KEY": lcfg.APIKey, "LASERSELL_SESSION": session,
		"LASERSELL_WALLETS": "ClusWallet111111111111111111111111111111111", "LASERSELL_TARGET_PROFIT_PCT": "5",
	}
	for _, s := range []string{"LASERSELL_EXIT", "LASERSELL_EVENTS", "LASERSELL_PNL", "CONNECTOR_AUDIT"} {
		env["STREAM_"+s+"_REPLICAS"] = "3"
		env["STREAM_"+s+"_MAX_BYTES"] = "67108864" // the harness's nodes store 256 MiB each
	}
	p := startConnectorProc(t, "solo", env)
	js, err := jetstream.New(c.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "exit signals stored on the cluster", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n < 30 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
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
	var resumed time.Duration
	waitUntil(t, 30*time.Second, "the next exit stored after the leader kill", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n <= seqBefore {
			return fmt.Errorf("last seq %d", n)
		}
		resumed = time.Since(killed)
		return nil
	})
	time.Sleep(2 * time.Second) // exits keep flowing through the new leader
	c.Restart(leader)
	time.Sleep(2 * time.Second)

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
	seqMid := lastSeq(js, subjects.StreamLaserSellExit)
	waitUntil(t, 30*time.Second, "exits still stored after the leases leader's kill", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n <= seqMid+10 {
			return fmt.Errorf("last seq %d", n)
		}
		return nil
	})
	c.Restart(leasesLeader)
	// Stop only once exits flow again: a graceful stop drains the lanes for
	// CONNECTOR_DRAIN_TIMEOUT, and what a still-electing cluster does not
	// acknowledge by then is abandoned (counted as failed).
	seqBack := lastSeq(js, subjects.StreamLaserSellExit)
	waitUntil(t, 60*time.Second, "exits stored after the restart", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n <= seqBack+10 {
			return fmt.Errorf("last seq %d", n)
		}
		return nil
	})
	if err := p.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.checkNoRace()
	sent := ls.Stats().ExitSignalsSent

	var exits []storedMsg
	waitUntil(t, 30*time.Second, "the exit stream readable", func() (err error) {
		exits, err = readStreamDirect(js, subjects.StreamLaserSellExit)
		if err == nil && uint64(len(exits)) < sent {
			err = fmt.Errorf("%d of %d", len(exits), sent)
		}
		return err
	})
	checkExitsOnceInOrder(t, exits)
	if uint64(len(exits)) != sent {
		t.Errorf("exits: %d sent, %d stored", sent, len(exits))
	}
	// The lease never changed hands: one acquisition in the whole run.
	out := string(p.output())
	if n := strings.Count(out, "lease taken; starting the session"); n > 1 {
		t.Errorf("the lease was taken %d times: an election moved it", n)
	}
	if strings.Contains(out, "self-fencing") || strings.Contains(out, "lease lost") {
		t.Errorf("the replica lost or could not confirm its lease during the election")
	}
	t.Logf("MEASURED R3 cluster, leader n%d of %s killed during exits every 20 ms and 2,000 PnL/s: next exit stored %v after the kill; "+
		"then leader n%d of KV_%s killed: new leader after %v, no lease change; exits sent %d, stored %d, duplicates 0, out of order 0; lease epoch %d kept",
		leader, subjects.StreamLaserSellExit, resumed.Round(time.Millisecond), leasesLeader, subjects.BucketLeases, leasesElected.Round(time.Millisecond),
		sent, len(exits), before.Sessions[0].Epoch)
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
