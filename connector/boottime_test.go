package connector

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// The boot clock runs at least as fast as Go's monotonic clock (they differ
// only by time suspended).
func TestBootClockKeepsPaceWithTheMonotonicClock(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CLOCK_BOOTTIME is Linux's")
	}
	b0, ok := bootClock()
	m0 := time.Now()
	if !ok || b0 <= 0 {
		t.Fatalf("bootClock() = %v, %v", b0, ok)
	}
	time.Sleep(50 * time.Millisecond)
	b1, _ := bootClock()
	mono := time.Since(m0)
	if boot := b1 - b0; boot < mono-time.Millisecond || boot > mono+50*time.Millisecond {
		t.Fatalf("boot clock advanced %v while the monotonic clock advanced %v", boot, mono)
	}
}

// A machine suspended after the last renewal was sent: the monotonic clock
// did not count the sleep, the server's clock (and so the lease's age) did.
// The fence must close on the boot clock although the monotonic deadline
// still lies ahead. The suspension is simulated by moving the boot-clock
// stamp of the last renewal back by the time asleep.
func TestLeaseFenceCountsSuspendedTime(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CLOCK_BOOTTIME is Linux's")
	}
	const ttl = 10 * time.Second
	_, js := startTestJS(t, "UNUSED", "unused.>")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, LeaseBucket("LEASES_BOOT", ttl, 1))
	if err != nil {
		t.Fatal(err)
	}
	leases, err := NewLeases(kv, "r1", ttl)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := leases.Acquire(ctx, "lasersell.boot")
	if err != nil {
		t.Fatal(err)
	}
	margin := time.Second
	if !lease.Valid(time.Now(), margin) {
		t.Fatal("a lease just acquired is not valid")
	}
	lease.mu.Lock()
	lease.sent.boot -= ttl - margin/2 // asleep for most of the TTL
	lease.mu.Unlock()
	if time.Until(lease.ValidUntil()) < ttl-2*margin {
		t.Fatalf("the monotonic deadline moved: %v left", time.Until(lease.ValidUntil()))
	}
	if lease.Valid(time.Now(), margin) {
		t.Fatal("the fence stayed open after a suspension of most of the TTL")
	}
	f := &Fleet{opts: FleetOptions{Replica: "r1", Margin: margin}}
	if err := f.fence(lease)(); err == nil {
		t.Fatal("the session's write fence passed after the suspension")
	}

	// The next renewal stamps both clocks afresh: the fence opens again.
	if err := leases.Renew(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if !lease.Valid(time.Now(), margin) {
		t.Fatal("not valid after a renewal")
	}
}
