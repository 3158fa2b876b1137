package natscluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	stream  = "ORDERS"
	bucket  = "state"
	subject = "orders.new"
)

// fixture starts a cluster with an R3 stream and an R3 key-value bucket.
func fixture(t *testing.T) (*Cluster, jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	c := Start(t, Options{})
	js, err := jetstream.New(c.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	// A cluster just formed on a loaded machine may take a while to place
	// R3 assets: each create is retried while no leader answers in time.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := answered(ctx, func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name: stream, Subjects: []string{"orders.>"}, Replicas: 3,
			Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, MaxBytes: 32 << 20,
		})
		return err
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	var kv jetstream.KeyValue
	if err := answered(ctx, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Replicas: 3, MaxBytes: 8 << 20})
		return err
	}); err != nil {
		t.Fatalf("create KV bucket: %v", err)
	}
	for _, s := range []string{stream, "KV_" + bucket} {
		if _, err := c.WaitStreamLeader(ctx, s, -1); err != nil {
			t.Fatal(err)
		}
	}
	return c, js, kv
}

// writer publishes to the stream (with Nats-Msg-Id) and creates keys in the
// bucket in a loop, retrying each message or key until it is acknowledged,
// as a real client would, until stopped.
type writer struct {
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	acked    map[string]uint64 // message id -> stream sequence
	keys     map[string]string // key -> value, acknowledged
	ackTimes [][2]time.Time    // every acknowledged publish, in order: attempt start, ack
	retries  int
	errs     map[string]int
	fatal    error
}

func startWriter(js jetstream.JetStream, kv jetstream.KeyValue) *writer {
	w := &writer{
		js: js, kv: kv, stop: make(chan struct{}), done: make(chan struct{}),
		acked: map[string]uint64{}, keys: map[string]string{}, errs: map[string]int{},
	}
	go w.run()
	return w
}

func (w *writer) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// attemptTimeout bounds one publish attempt: it is the resolution of the
// leaderless-time measure.
const attemptTimeout = 500 * time.Millisecond

func (w *writer) run() {
	defer close(w.done)
	for n := 0; !w.stopped(); n++ {
		// Once stopped, the current message and key are still retried until
		// acknowledged (for at most 20 s), so that every one tried is acked.
		var deadline time.Time
		giveUp := func() bool {
			if !w.stopped() {
				return false
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(20 * time.Second)
			}
			return time.Now().After(deadline)
		}
		id := fmt.Sprintf("m-%06d", n)
		for attempt := 0; ; attempt++ {
			if giveUp() {
				w.fail(fmt.Errorf("message %s never acknowledged", id))
				return
			}
			sent := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
			ack, err := w.js.Publish(ctx, subject, []byte(id), jetstream.WithMsgID(id))
			cancel()
			if err != nil {
				w.retry(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			if prev, ok := w.acked[id]; ok && prev != ack.Sequence {
				w.fatal = fmt.Errorf("message %s acknowledged at sequences %d and %d", id, prev, ack.Sequence)
			}
			w.acked[id] = ack.Sequence
			w.ackTimes = append(w.ackTimes, [2]time.Time{sent, time.Now()})
			w.mu.Unlock()
			break
		}
		if n%4 != 0 {
			continue
		}
		key, val := fmt.Sprintf("k%06d", n), id
		for attempt := 0; ; attempt++ {
			if giveUp() {
				w.fail(fmt.Errorf("key %s never acknowledged", key))
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
			_, err := w.kv.Create(ctx, key, []byte(val))
			cancel()
			if errors.Is(err, jetstream.ErrKeyExists) && attempt > 0 {
				err = nil // stored by an earlier attempt whose ack was lost
			}
			if err != nil {
				w.retry(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			w.keys[key] = val
			w.mu.Unlock()
			break
		}
	}
}

func (w *writer) retry(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.retries++
	w.errs[err.Error()]++
}

func (w *writer) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fatal == nil {
		w.fatal = err
	}
}

// firstAckAfter is the acknowledgement time of the first publish sent after
// t and acknowledged.
func (w *writer) firstAckAfter(t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, at := range w.ackTimes {
		if at[0].After(t) {
			return at[1], true
		}
	}
	return time.Time{}, false
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitAcks waits until n more publishes are acknowledged.
func (w *writer) waitAcks(t *testing.T, n int, what string) {
	t.Helper()
	want := w.count() + n
	if err := waitFor(30*time.Second, fmt.Sprintf("%d acknowledged publishes %s", n, what), func() error {
		if got := w.count(); got < want {
			return fmt.Errorf("%d of %d", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// finish stops the writer and checks that every acknowledged message is
// stored exactly once and every acknowledged key holds its value.
func (w *writer) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("writer did not stop within 30 s")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("writer: %d messages and %d keys acknowledged, %d retries: %v", len(w.acked), len(w.keys), w.retries, w.errs)
	if w.fatal != nil {
		t.Fatal(w.fatal)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The reads below go through the stream and bucket leaders, which may
	// still be moving after a restart: each one is retried until answered.
	var str jetstream.Stream
	if err := answered(ctx, func(ctx context.Context) (err error) {
		str, err = w.js.Stream(ctx, stream)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	info := str.CachedInfo()
	msgs := info.State.Msgs
	if msgs != uint64(len(w.acked)) {
		t.Errorf("stream holds %d messages, %d were acknowledged (each retried until acked)", msgs, len(w.acked))
	}
	seen := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		var m *jetstream.RawStreamMsg
		if err := answered(ctx, func(ctx context.Context) (err error) {
			m, err = str.GetMsg(ctx, seq)
			return err
		}); err != nil {
			t.Fatalf("message at sequence %d: %v", seq, err)
		}
		id := m.Header.Get(nats.MsgIdHdr)
		seen[id]++
		if ackSeq, ok := w.acked[id]; !ok {
			t.Errorf("stored message %q (seq %d) was never acknowledged", id, seq)
		} else if ackSeq != seq {
			t.Errorf("message %s stored at %d, acknowledged at %d", id, seq, ackSeq)
		}
	}
	for id := range w.acked {
		if seen[id] != 1 {
			t.Errorf("acknowledged message %s stored %d times", id, seen[id])
		}
	}

	var stored []string
	if err := answered(ctx, func(ctx context.Context) error {
		keys, err := w.kv.ListKeys(ctx)
		if err != nil {
			return err
		}
		stored = stored[:0]
		for k := range keys.Keys() {
			stored = append(stored, k)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range stored {
		if _, ok := w.keys[k]; !ok {
			t.Errorf("stored key %s was never acknowledged", k)
		}
	}
	if len(stored) != len(w.keys) {
		t.Errorf("bucket holds %d keys, %d were acknowledged", len(stored), len(w.keys))
	}
	for k, v := range w.keys {
		var e jetstream.KeyValueEntry
		if err := answered(ctx, func(ctx context.Context) (err error) {
			e, err = w.kv.Get(ctx, k)
			return err
		}); err != nil {
			t.Errorf("acknowledged key %s: %v", k, err)
			continue
		}
		if string(e.Value()) != v || e.Revision() == 0 {
			t.Errorf("key %s = %q, want %q", k, e.Value(), v)
		}
	}
}

// answered runs a read until it gets an answer: errors that mean "no leader
// answered yet" (no responders, no response from stream, a timed-out attempt)
// are retried until ctx ends; any other error is returned at once.
func answered(ctx context.Context, read func(context.Context) error) error {
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := read(attempt)
		cancel()
		transient := errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
			errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
		if err == nil || !transient {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamState is the state of a stream as node s stores it.
func streamState(s *server.Server, name string) (server.StreamState, error) {
	jsz, err := s.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		return server.StreamState{}, err
	}
	for _, a := range jsz.AccountDetails {
		for _, sd := range a.Streams {
			if sd.Name == name {
				return sd.State, nil
			}
		}
	}
	return server.StreamState{}, fmt.Errorf("node %s has no stream %s", s.Name(), name)
}

// waitSameState waits until every running node stores the same last sequence
// and message count of each stream: the followers have caught up.
func waitSameState(t *testing.T, c *Cluster, streams ...string) {
	t.Helper()
	for _, name := range streams {
		err := waitFor(20*time.Second, "every node storing the same state of stream "+name, func() error {
			var first *server.StreamState
			for i := range c.N() {
				s := c.Node(i)
				if s == nil {
					continue
				}
				st, err := streamState(s, name)
				if err != nil {
					return err
				}
				if first == nil {
					first = &st
				} else if st.LastSeq != first.LastSeq || st.Msgs != first.Msgs {
					return fmt.Errorf("n%d has last seq %d, %d msgs; another node %d, %d", i, st.LastSeq, st.Msgs, first.LastSeq, first.Msgs)
				}
			}
			return nil
		})
		if err != nil {
			for i := range c.N() {
				if s := c.Node(i); s != nil {
					h := s.Healthz(&server.HealthzOptions{Details: true})
					t.Logf("n%d healthz: %s %+v", i, h.Status, h.Errors)
				}
			}
			t.Fatal(err)
		}
	}
}

func TestRoutesGoThroughProxies(t *testing.T) {
	c := Start(t, Options{})
	// Every route connection is counted by both of its ends, and carried by
	// exactly one proxy.
	err := waitFor(10*time.Second, "every route connection carried by a route proxy", func() error {
		ends := 0
		for i := range c.N() {
			rz, err := c.Node(i).Routez(&server.RoutezOptions{})
			if err != nil {
				return err
			}
			ends += len(rz.Routes)
		}
		proxied := 0
		for a := range c.N() {
			for b := range c.N() {
				if a != b {
					proxied += c.RouteProxy(a, b).Active()
				}
			}
		}
		if ends == 0 || ends != 2*proxied {
			return fmt.Errorf("%d route ends, %d proxied connections", ends, proxied)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if leader, err := c.MetaLeader(); err != nil || leader < 0 {
		t.Fatalf("meta leader: %d, %v", leader, err)
	}
}

func TestStepDownKeepsAckedPublishesOnce(t *testing.T) {
	c, js, kv := fixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := startWriter(js, kv)
	w.waitAcks(t, 50, "before the step-down")

	for _, s := range []string{stream, "KV_" + bucket} {
		old, err := c.StreamLeader(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		nl, err := c.StepDown(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if nl == old {
			t.Fatalf("stream %s: leader n%d after step-down, same as before", s, nl)
		}
		t.Logf("stream %s: step-down n%d -> n%d in %v", s, old, nl, time.Since(start).Round(time.Millisecond))
		w.waitAcks(t, 50, "after the step-down of "+s)
	}
	kvl, err := c.KVLeader(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KV leader now n%d", kvl)
	w.finish(t)
	waitSameState(t, c, stream, "KV_"+bucket)
}

func TestKillRestartKeepsAckedPublishesOnce(t *testing.T) {
	c, js, kv := fixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	w := startWriter(js, kv)
	w.waitAcks(t, 50, "before the kill")

	old, err := c.StreamLeader(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	before, err := streamState(c.Node(old), stream)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.Kill(old)
	nl, err := c.WaitStreamLeader(ctx, stream, old)
	if err != nil {
		t.Fatal(err)
	}
	leaderSeen := time.Since(killed)
	w.waitAcks(t, 50, "after the kill of the stream leader")
	first, _ := w.firstAckAfter(killed)
	t.Logf("LEADERLESS stream %s: killed leader n%d; first acked publish after %v (attempt timeout %v); new leader n%d reported after %v",
		stream, old, first.Sub(killed).Round(time.Millisecond), attemptTimeout, nl, leaderSeen.Round(time.Millisecond))
	if nl == old {
		t.Fatalf("new leader n%d is the killed node", nl)
	}
	if kl, err := c.KVLeader(ctx, bucket); err != nil {
		t.Fatal(err)
	} else if kl == old {
		t.Fatalf("KV leader n%d is the killed node", kl)
	}

	restarting := time.Now()
	c.Restart(old)
	t.Logf("n%d restarted and current in %v", old, time.Since(restarting).Round(time.Millisecond))
	w.waitAcks(t, 50, "after the restart")
	w.finish(t)
	waitSameState(t, c, stream, "KV_"+bucket)
	after, err := streamState(c.Node(old), stream)
	if err != nil {
		t.Fatal(err)
	}
	if after.LastSeq <= before.LastSeq {
		t.Fatalf("restarted n%d did not catch up: last seq %d, was %d before the kill", old, after.LastSeq, before.LastSeq)
	}
}

func TestIsolateCutsAndHealRestoresRoutes(t *testing.T) {
	c := Start(t, Options{})
	c.Isolate(2)
	err := waitFor(10*time.Second, "n2 losing every route", func() error {
		for i := range c.N() {
			if c.connected(i, 2) || c.connected(2, i) {
				return fmt.Errorf("n%d and n2 still routed", i)
			}
		}
		if n := c.Routes(2); n != 0 {
			return fmt.Errorf("n2 holds %d routes", n)
		}
		if !c.connected(0, 1) {
			return errors.New("n0 and n1 lost their route")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // redials are refused meanwhile
	if n := c.Routes(2); n != 0 {
		t.Fatalf("isolated n2 holds %d routes", n)
	}
	c.Heal(2)
}
