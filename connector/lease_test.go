package connector_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

const leaseTTL = time.Second

func leaseBucket(t *testing.T, env *connectortest.Env) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := env.JS.CreateOrUpdateKeyValue(ctx, connector.LeaseBucket(subjects.BucketLeases, leaseTTL, 1))
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// replicaLeases gives each replica its own connection, as separate processes have.
func replicaLeases(t *testing.T, env *connectortest.Env, name string) *connector.Leases {
	t.Helper()
	js, err := jetstream.New(env.Connect())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), subjects.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	l, err := connector.NewLeases(kv, name, leaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Twenty candidates race for one session: exactly one wins, and every other
// one is told who did.
func TestLeaseRaceHasExactlyOneWinner(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	leaseBucket(t, env)
	const n = 20
	candidates := make([]*connector.Leases, n)
	for i := range candidates {
		candidates[i] = replicaLeases(t, env, fmt.Sprintf("r%02d", i))
	}
	for round := range 3 {
		key := fmt.Sprintf("lasersell.race%d", round)
		var mu sync.Mutex
		var winners []*connector.Lease
		var held []*connector.LeaseHeldError
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range candidates {
			wg.Go(func() {
				<-start
				lease, err := c.Acquire(context.Background(), key)
				mu.Lock()
				defer mu.Unlock()
				var he *connector.LeaseHeldError
				switch {
				case err == nil:
					winners = append(winners, lease)
				case errors.As(err, &he):
					held = append(held, he)
				default:
					t.Errorf("acquire: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 || len(held) != n-1 {
			t.Fatalf("round %d: %d winners, %d refused", round, len(winners), len(held))
		}
		for _, h := range held {
			if h.Replica != "" && h.Replica != winners[0].Replica {
				t.Fatalf("refusal names %q, the winner is %q", h.Replica, winners[0].Replica)
			}
		}
	}
}

// A held lease is renewed and never stolen; left without renewal it expires
// after the TTL (the watcher sees it at once, thanks to the limit marker);
// then another replica takes it with a higher epoch and the old owner's
// renewal fails as lost. A released lease is free at once.
func TestLeaseRenewExpireAndRelease(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	kv := leaseBucket(t, env)
	ctx := context.Background()
	a, b := replicaLeases(t, env, "a"), replicaLeases(t, env, "b")

	lease, err := a.Acquire(ctx, "openstream.arm1")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "openstream.arm1")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(e.Value()); !strings.Contains(got, `"replica":"a"`) || !strings.Contains(got, fmt.Sprintf(`"epoch":%d`, lease.Epoch)) {
		t.Fatalf("lease value %s (epoch %d)", got, lease.Epoch)
	}
	// Renewed past several TTLs: b never gets it.
	for range 4 {
		time.Sleep(leaseTTL / 3)
		if err := a.Renew(ctx, lease); err != nil {
			t.Fatalf("renew: %v", err)
		}
		if !lease.Valid(time.Now(), 0) {
			t.Fatal("a freshly renewed lease is not valid")
		}
		if _, err := b.Acquire(ctx, "openstream.arm1"); !errors.Is(err, connector.ErrLeaseHeld) {
			t.Fatalf("b acquired a live lease: %v", err)
		}
	}

	// a stops renewing (paused, partitioned): the key expires.
	w, err := kv.Watch(ctx, "openstream.arm1", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	stoppedRenewing := time.Now()
	select {
	case ev := <-w.Updates():
		if ev == nil || ev.Operation() == jetstream.KeyValuePut {
			t.Fatalf("unexpected update %v", ev)
		}
		if took := time.Since(stoppedRenewing); took > leaseTTL+time.Second {
			t.Fatalf("expiry seen after %s (TTL %s)", took, leaseTTL)
		}
	case <-time.After(leaseTTL + 3*time.Second):
		t.Fatal("the expired lease was never announced")
	}
	if lease.Valid(time.Now(), 0) {
		t.Fatal("the lease still claims to be valid after its TTL")
	}
	taken, err := b.Acquire(ctx, "openstream.arm1")
	if err != nil {
		t.Fatalf("b could not take the expired lease: %v", err)
	}
	if taken.Epoch <= lease.Epoch {
		t.Fatalf("new epoch %d is not above the old %d", taken.Epoch, lease.Epoch)
	}
	if err := a.Renew(ctx, lease); !errors.Is(err, connector.ErrLeaseLost) {
		t.Fatalf("the old owner renewed a lease it lost: %v", err)
	}
	// a's release of the lease it lost does not free b's, and says so.
	if err := a.Release(ctx, lease); !errors.Is(err, connector.ErrLeaseLost) {
		t.Fatalf("a stale release: %v", err)
	}
	if _, err := a.Acquire(ctx, "openstream.arm1"); !errors.Is(err, connector.ErrLeaseHeld) {
		t.Fatalf("a stale release freed the new owner's lease: %v", err)
	}

	// b hands over: a takes it at once.
	if err := b.Release(ctx, taken); err != nil {
		t.Fatal(err)
	}
	again, err := a.Acquire(ctx, "openstream.arm1")
	if err != nil {
		t.Fatalf("released lease not free: %v", err)
	}
	if again.Epoch <= taken.Epoch {
		t.Fatalf("epoch %d after release is not above %d", again.Epoch, taken.Epoch)
	}
}

// A process restarted with the same replica name adopts the lease its
// predecessor left (a new epoch, at once, without waiting for the TTL); the
// predecessor's lease is dead from then on; another name cannot adopt it.
func TestLeaseAdoptByTheSameName(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	leaseBucket(t, env)
	ctx := context.Background()
	before := replicaLeases(t, env, "a")
	old, err := before.Acquire(ctx, "probe.s")
	if err != nil {
		t.Fatal(err)
	}

	var held *connector.LeaseHeldError
	if _, err := replicaLeases(t, env, "b").Adopt(ctx, "probe.s"); !errors.As(err, &held) || held.Replica != "a" || held.Epoch != old.Epoch {
		t.Fatalf("replica b adopting a's lease: %v, want held by a at epoch %d", err, old.Epoch)
	}
	restarted := replicaLeases(t, env, "a")
	start := time.Now()
	adopted, err := restarted.Adopt(ctx, "probe.s")
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > leaseTTL/2 {
		t.Errorf("adopting took %v; it must not wait for the TTL %v", took, leaseTTL)
	}
	if adopted.Replica != "a" || adopted.Epoch <= old.Epoch {
		t.Fatalf("adopted %+v, want replica a with an epoch above %d", adopted, old.Epoch)
	}
	if err := before.Renew(ctx, old); !errors.Is(err, connector.ErrLeaseLost) {
		t.Fatalf("the predecessor's renewal after the adoption: %v, want ErrLeaseLost", err)
	}
	if err := restarted.Renew(ctx, adopted); err != nil {
		t.Fatalf("renewing the adopted lease: %v", err)
	}
	// Adopting a free key acquires it.
	free, err := restarted.Adopt(ctx, "probe.free")
	if err != nil || free.Epoch == 0 {
		t.Fatalf("adopting a free key: %+v, %v", free, err)
	}
}

// A renewal stored although its ack was lost (an election, a timeout) moves
// the key's revision behind the owner's back. The owner's next renewal and
// its release find the key still naming it with its epoch: still its lease,
// not "lost". A key rewritten by another epoch (a same-name process that
// adopted it) is lost.
func TestLeaseSurvivesARenewalWhoseAckWasLost(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	kv := leaseBucket(t, env)
	l := replicaLeases(t, env, "r1")
	ctx := context.Background()
	lease, err := l.Acquire(ctx, "lasersell.ackless")
	if err != nil {
		t.Fatal(err)
	}
	// The owner's own value stored again behind its back.
	e, err := kv.Get(ctx, lease.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, lease.Key, e.Value(), e.Revision()); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx, lease); err != nil {
		t.Fatalf("renew after an unacknowledged renewal of its own: %v", err)
	}
	if err := l.Renew(ctx, lease); err != nil {
		t.Fatalf("the renewal after that: %v", err)
	}
	if !lease.Valid(time.Now(), 0) {
		t.Fatal("the lease is not valid after its renewals")
	}
	if _, err := kv.Update(ctx, lease.Key, mustGet(t, kv, lease.Key).Value(), mustGet(t, kv, lease.Key).Revision()); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, lease); err != nil {
		t.Fatalf("release after an unacknowledged renewal of its own: %v", err)
	}
	if _, err := kv.Get(ctx, lease.Key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the key after the release: %v", err)
	}

	// Another epoch under the same name: lost.
	lease, err = l.Acquire(ctx, "lasersell.ackless")
	if err != nil {
		t.Fatal(err)
	}
	e = mustGet(t, kv, lease.Key)
	other := strings.Replace(string(e.Value()), fmt.Sprintf(`"epoch":%d`, lease.Epoch), `"epoch":999999`, 1)
	if other == string(e.Value()) {
		t.Fatalf("lease value %s names no epoch %d", e.Value(), lease.Epoch)
	}
	if _, err := kv.Update(ctx, lease.Key, []byte(other), e.Revision()); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx, lease); !errors.Is(err, connector.ErrLeaseLost) {
		t.Fatalf("renew after another epoch took the key: %v", err)
	}
}

func mustGet(t *testing.T, kv jetstream.KeyValue, key string) jetstream.KeyValueEntry {
	t.Helper()
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
