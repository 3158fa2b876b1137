package main

// The rig of the NATS cluster tests (cluster_*_test.go): a three-node
// JetStream cluster (internal/natscluster), the LaserSell simulator and an
// Open Stream robot, the environment of `connector run` processes that use
// them with every stream and bucket replicated three times, and the checks
// that read back what the high lanes stored.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/internal/natscluster"
	"github.com/jetbridge/connector/subjects"
)

const (
	clusterSession = "cluster" // the LaserSell session
	clusterRobot   = "arm"     // the Open Stream robot
	// clusterMonitor is the robot's monitor, seeded by OPENSTREAM_MONITORS.
	clusterMonitor = "pose"
)

// The streams of the high lanes the tests read back: of the LaserSell
// session alone, and with the robot.
var (
	laserSellHighStreams = []string{subjects.StreamLaserSellExit, subjects.StreamLaserSellEvents, subjects.StreamAudit}
	clusterHighStreams   = append(slices.Clone(laserSellHighStreams), subjects.StreamOpenStreamEvent)
)

// clusterRig is the cluster, the simulators the replicas connect to, and a
// client connection of the test to the cluster.
type clusterRig struct {
	c         *natscluster.Cluster
	ls        *lssim.Server
	lsKey     string
	lsURL     string
	robotAddr string // empty without the robot
	nc        *nats.Conn
	js        jetstream.JetStream
}

// clusterSimConfig is the LaserSell simulator of the cluster tests (and of
// the fleet tests that count exits across handovers): it opens
// a position every 50 ms, up to two at a time, sends an exit signal every
// 20 ms and pnlRate PnL updates per second.
func clusterSimConfig(pnlRate float64) lssim.Config {
	lcfg := lssim.DefaultConfig()
	lcfg.APIKey = "cluster-test-key"
	lcfg.AutoPositions = 2
	lcfg.ExitEvery = 20 * time.Millisecond
	lcfg.OpenEvery = 50 * time.Millisecond
	lcfg.PnLRate = pnlRate
	lcfg.EnforceSessionLimit = false // a second session would be visible, not refused
	return lcfg
}

// startClusterRig starts the cluster and both simulators.
func startClusterRig(t *testing.T, pnlRate float64) *clusterRig {
	t.Helper()
	lcfg := clusterSimConfig(pnlRate)
	ls, lsURL, _, robotAddr := startSims(t, lcfg)
	r := newClusterRig(t, ls, lcfg.APIKey, lsURL)
	r.robotAddr = robotAddr
	return r
}

// newClusterRig starts the cluster for a LaserSell simulator already
// running, and a client connection to it.
func newClusterRig(t testing.TB, ls *lssim.Server, apiKey, lsURL string) *clusterRig {
	t.Helper()
	c := natscluster.Start(t, natscluster.Options{})
	nc := c.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &clusterRig{c: c, ls: ls, lsKey: apiKey, lsURL: lsURL, nc: nc, js: js}
}

// env is the configuration of one replica serving HTTP on httpAddr: the
// LaserSell session and, with robot, the Open Stream robot; every stream
// and bucket R3; a drain timeout long enough to outlast an election, so a
// stop never abandons what a cluster still electing has not acknowledged.
func (r *clusterRig) env(replica, httpAddr string, robot bool) map[string]string {
	env := map[string]string{
		"NATS_URL": r.c.URLs(), "CONNECTOR_HTTP_ADDR": httpAddr, "LOG_LEVEL": "info", "LOG_FORMAT": "json",
		"CONNECTOR_REPLICA": replica, "CONNECTOR_KV_REPLICAS": "3", "CONNECTOR_SOURCES": "lasersell",
		"CONNECTOR_DRAIN_TIMEOUT": "30s", "CONNECTOR_COMMAND_TIMEOUT": "5s",
		"LASERSELL_URL": r.lsURL, "LASERSELL_API_KEY": r.lsKey, "LASERSELL_SESSION": clusterSession,
		"LASERSELL_WALLETS": "ClusWallet111111111111111111111111111111111", "LASERSELL_TARGET_PROFIT_PCT": "5",
		"LASERSELL_BACKOFF_MAX": "300ms",
	}
	streams := []string{subjects.StreamLaserSellExit, subjects.StreamLaserSellEvents, subjects.StreamLaserSellPnL, subjects.StreamAudit}
	if robot {
		env["CONNECTOR_SOURCES"] = "lasersell,openstream"
		env["OPENSTREAM_ROBOTS"] = clusterRobot + "=" + r.robotAddr
		env["OPENSTREAM_MONITORS"] = clusterRobot + "/" + clusterMonitor + "=/project/robot/po_cur@20ms"
		env["OPENSTREAM_BACKOFF_MAX"] = "300ms"
		streams = append(streams, subjects.StreamOpenStreamData, subjects.StreamOpenStreamEvent)
	}
	for _, s := range streams {
		env["STREAM_"+s+"_REPLICAS"] = "3"
		env["STREAM_"+s+"_MAX_BYTES"] = "33554432" // the harness's nodes store 256 MiB each
	}
	return env
}

// clusterSessions are the lease keys of the LaserSell session and the robot.
func clusterSessions() []string {
	return []string{subjects.SessionKey(subjects.KindLaserSell, clusterSession), subjects.SessionKey(subjects.KindOpenStream, clusterRobot)}
}

// startSolo runs one replica, "solo", with the LaserSell session and the
// robot, and waits until exits are stored and both leases are held; it
// returns the process, its HTTP address and the leases.
func (r *clusterRig) startSolo(t *testing.T) (*connectorProc, string, map[string]leaseView) {
	t.Helper()
	httpAddr := freeLoopbackAddr(t)
	p := startConnectorProc(t, "solo", r.env("solo", httpAddr, true))
	r.waitExitsAfter(t, 0, 30, 60*time.Second, "exit signals stored on the cluster")
	return p, httpAddr, r.waitLeases(t, 10*time.Second, clusterSessions()...)
}

// startPair runs replicas a and b of the LaserSell session and the robot,
// with extra variables, and waits until a owns both sessions and b stands
// by. a starts first: it provisions the streams and buckets alone (on a
// loaded machine a cluster just formed answers two provisioning replicas
// slowly) and is the preferred replica of both sessions (rendezvous hashing
// of their keys over {a, b}), so b's arrival moves nothing.
func (r *clusterRig) startPair(t *testing.T, extra map[string]string) (a, b *connectorProc, httpA, httpB string) {
	t.Helper()
	httpA, httpB = freeLoopbackAddr(t), freeLoopbackAddr(t)
	env := func(replica, addr string) map[string]string {
		e := r.env(replica, addr, true)
		maps.Copy(e, extra)
		return e
	}
	a = startConnectorProc(t, "a", env("a", httpA))
	r.waitExitsAfter(t, 0, 20, 60*time.Second, "exit signals stored on the cluster")
	b = startConnectorProc(t, "b", env("b", httpB))
	waitUntil(t, 30*time.Second, "both sessions owned by their preferred replica", func() error {
		return fleetSettled([]string{httpA, httpB}, clusterSessions())
	})
	for k, l := range r.waitLeases(t, 10*time.Second, clusterSessions()...) {
		if l.Replica != "a" {
			t.Fatalf("lease %s held by %s, want a (started first and preferred)", k, l.Replica)
		}
	}
	return a, b, httpA, httpB
}

// waitExitsAfter waits until the exit stream's last sequence is more than
// n past seq, and returns how long that took.
func (r *clusterRig) waitExitsAfter(t testing.TB, seq, n uint64, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	waitUntil(t, within, what, func() error {
		if last := lastSeq(r.js, subjects.StreamLaserSellExit); last <= seq+n {
			return fmt.Errorf("last exit seq %d, want > %d", last, seq+n)
		}
		return nil
	})
	return time.Since(start)
}

// catchUpWithin bounds the wait for a connector to store every exit sent
// after a NATS fault. It stays behind while its high lane retries through
// an election, and catches up one round trip per exit: under the whole
// suite on 2 cores, with the simulator still sending an exit every 20 ms,
// that took more than 30 s once (1971 of 2000 stored, none lost) and more
// than 60 s under extra load (2880 of 3560), so waitCaughtUp pauses the
// simulator's exits while it waits.
const catchUpWithin = 60 * time.Second

// waitCaughtUp waits until, at one moment, every exit the simulator has
// sent, but lost (exits a killed process had read and not published), is
// stored: the connector has worked off the backlog the faults left (the
// high lane full, the upstream reader waiting, the socket holding the
// rest). The simulator's scheduled exits pause meanwhile. Exits still
// unread in the socket when a replica stops or dies are gone with its
// connection, so the tests wait for this before stopping or killing one.
// It returns how long that took.
func (r *clusterRig) waitCaughtUp(t testing.TB, within time.Duration, lost uint64) time.Duration {
	t.Helper()
	r.ls.SetScheduledExits(false)
	defer r.ls.SetScheduledExits(true)
	start := time.Now()
	waitUntil(t, within, fmt.Sprintf("every exit sent stored (but %d lost)", lost), func() error {
		stored := lastSeq(r.js, subjects.StreamLaserSellExit)
		if sent := r.ls.Stats().ExitSignalsSent; stored+lost < sent {
			return fmt.Errorf("%d of %d stored", stored, sent)
		}
		return nil
	})
	return time.Since(start)
}

// kvEntries reads every key of a bucket with its value and revision; a key
// deleted between the listing and its read (a lease released or expired) is
// left out.
func (r *clusterRig) kvEntries(bucket string) (map[string]kvEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]kvEntry{}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", bucket, k, err)
		}
		out[k] = kvEntry{Revision: e.Revision(), Value: string(e.Value())}
	}
	return out, nil
}

type kvEntry struct {
	Revision uint64
	Value    string
}

// leaseDocs reads every lease of CONNECTOR_LEASES (key -> owner and epoch).
func (r *clusterRig) leaseDocs() (map[string]leaseView, error) {
	entries, err := r.kvEntries(subjects.BucketLeases)
	if err != nil {
		return nil, err
	}
	out := map[string]leaseView{}
	for k, e := range entries {
		var v leaseView
		if err := json.Unmarshal([]byte(e.Value), &v); err != nil {
			return nil, fmt.Errorf("lease %s: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// leaseView is the part of a lease the tests compare.
type leaseView struct {
	Replica string `json:"replica"`
	Epoch   uint64 `json:"epoch"`
}

// waitLeases waits until the sessions' leases are all held and reads them.
func (r *clusterRig) waitLeases(t testing.TB, within time.Duration, keys ...string) map[string]leaseView {
	t.Helper()
	var leases map[string]leaseView
	waitUntil(t, within, "leases of "+strings.Join(keys, ", "), func() (err error) {
		if leases, err = r.leaseDocs(); err != nil {
			return err
		}
		for _, k := range keys {
			if leases[k].Replica == "" || leases[k].Epoch == 0 {
				return fmt.Errorf("lease %s: %+v", k, leases[k])
			}
		}
		return nil
	})
	return leases
}

// checkLeaseKept fails the test when a replica's output shows that a lease
// changed hands or could not be confirmed: more "lease taken" lines than
// sessions it started, a loss, or a self-fence.
func checkLeaseKept(t testing.TB, p *connectorProc, sessions int) {
	t.Helper()
	out := string(p.output())
	if n := strings.Count(out, "lease taken; starting the session"); n != sessions {
		t.Errorf("replica %s took a lease %d times, want %d: ownership moved", p.name, n, sessions)
	}
	for _, bad := range []string{"self-fencing", "lease lost"} {
		if strings.Contains(out, bad) {
			t.Errorf("replica %s logged %q", p.name, bad)
		}
	}
}

// readClusterStream reads a whole stream, retried while the cluster's
// leaders settle.
func (r *clusterRig) readClusterStream(t testing.TB, stream string) []storedMsg {
	t.Helper()
	var msgs []storedMsg
	waitUntil(t, 30*time.Second, "stream "+stream+" readable", func() (err error) {
		msgs, err = readStreamDirect(r.js, stream)
		return err
	})
	return msgs
}

// checkHighLanes reads the high-lane streams given and checks, per session
// (Connector-Source and Connector-Session), that Connector-Seq numbers
// every stored message exactly once from 1 without a gap, and that each
// stream stores a session's messages in Connector-Seq order: nothing the
// high lane received was lost, stored twice or reordered. It expects one
// incarnation per session (no ownership change: a new owner starts
// numbering at 1 again). It returns the exits read and the messages per
// session.
func (r *clusterRig) checkHighLanes(t testing.TB, streams ...string) (exits []storedMsg, perSession map[string]int) {
	t.Helper()
	seqs := map[string][]uint64{}
	for _, stream := range streams {
		msgs := r.readClusterStream(t, stream)
		if stream == subjects.StreamLaserSellExit {
			exits = msgs
		}
		last := map[string]uint64{}
		for _, m := range msgs {
			session := m.Header.Get(subjects.HeaderSource) + "." + m.Header.Get(subjects.HeaderSession)
			seq, err := strconv.ParseUint(m.Header.Get(subjects.HeaderSeq), 10, 64)
			if err != nil {
				t.Fatalf("%s seq %d: Connector-Seq %q: %v", stream, m.Seq, m.Header.Get(subjects.HeaderSeq), err)
			}
			if seq <= last[session] {
				t.Errorf("%s: %s Connector-Seq %d stored after %d", stream, session, seq, last[session])
			}
			last[session] = seq
			seqs[session] = append(seqs[session], seq)
		}
	}
	perSession = map[string]int{}
	for _, session := range slices.Sorted(maps.Keys(seqs)) {
		s := seqs[session]
		slices.Sort(s)
		perSession[session] = len(s)
		for i, seq := range s {
			if seq != uint64(i+1) {
				t.Errorf("%s: high-lane Connector-Seq %d where %d was expected (a gap: lost; a repeat: stored twice)", session, seq, i+1)
				break
			}
		}
	}
	return exits, perSession
}

// checkAllExits checks that the exits stored are every exit the simulator
// sent, once each and in order per position.
func (r *clusterRig) checkAllExits(t *testing.T, exits []storedMsg) {
	t.Helper()
	checkExitsOnceInOrder(t, exits)
	if sent := r.ls.Stats().ExitSignalsSent; uint64(len(exits)) != sent {
		t.Errorf("exits: %d sent, %d stored", sent, len(exits))
	}
}

// commandDriver sends, one after the other until stopped, commands that
// write to every high-lane stream and to the desired state: LaserSell
// update_strategy (CONNECTOR_DESIRED, audit) and ping (a pong in
// LASERSELL_EVENTS, audit) and, with the robot, a monitor with another
// period (CONNECTOR_DESIRED, a monitor_ack in OPENSTREAM_EVENTS, audit).
type commandDriver struct {
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}

	mu       sync.Mutex
	outcomes map[string]int // "<command> <ok|code|no reply>" -> count
}

// It is stopped at the test's cleanup at the latest.
func (r *clusterRig) driveCommands(t *testing.T, every time.Duration, robot bool) *commandDriver {
	d := &commandDriver{stop: make(chan struct{}), done: make(chan struct{}), outcomes: map[string]int{}}
	t.Cleanup(func() { d.finish() })
	type command struct{ subject, name, body string }
	var cmds []command
	for i := range 2 {
		cmds = append(cmds,
			command{subjects.Command(subjects.KindLaserSell, clusterSession, "update_strategy"), "update_strategy",
				fmt.Sprintf(`{"strategy":{"target_profit_pct":%d,"stop_loss_pct":1.5,"trailing_stop_pct":3}}`, 5+i)},
			command{subjects.Command(subjects.KindLaserSell, clusterSession, "ping"), "ping", `{}`})
		if robot {
			cmds = append(cmds, command{subjects.Command(subjects.KindOpenStream, clusterRobot, "monitor"), "monitor",
				fmt.Sprintf(`{"name":%q,"url":"/project/robot/po_cur","period_ms":%d}`, clusterMonitor, 20+i)})
		}
	}
	go func() {
		defer close(d.done)
		for i := 0; ; i++ {
			select {
			case <-d.stop:
				return
			case <-time.After(every):
			}
			c := cmds[i%len(cmds)]
			outcome := replyOutcome(r.nc.Request(c.subject, []byte(c.body), 6*time.Second))
			d.mu.Lock()
			d.outcomes[c.name+" "+outcome]++
			d.mu.Unlock()
		}
	}()
	return d
}

// finish stops the driver and returns how each command was answered.
func (d *commandDriver) finish() map[string]int {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.outcomes)
}
