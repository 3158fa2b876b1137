package connector

import (
	"context"
	"testing"
	"time"
)

// TestPriorityYield: the pump passes at once while no high-lane publish is
// in flight, waits for one until it ends, waits at most maxYield for one
// that does not end, and only once per publish.
func TestPriorityYield(t *testing.T) {
	y := newPriorityYield()
	w := yielder{y: y}
	ctx := context.Background()
	timed := func() time.Duration {
		start := time.Now()
		w.wait(ctx)
		return time.Since(start)
	}
	if d := timed(); d > time.Millisecond {
		t.Fatalf("waited %s with nothing in flight", d)
	}

	y.enter()
	go func() {
		for y.waiters.Load() == 0 { // end the publish once the pump waits for it
			time.Sleep(50 * time.Microsecond)
		}
		y.leave()
	}()
	if d := timed(); d >= maxYield {
		t.Fatalf("waited %s, the cap: the end of the publish did not wake the pump", d)
	}

	y.enter() // never ends in time
	if d := timed(); d < maxYield || d > maxYield+50*time.Millisecond {
		t.Fatalf("waited %s for a stuck publish, want the cap %s", d, maxYield)
	}
	if d := timed(); d > time.Millisecond {
		t.Fatalf("waited %s again for the same stuck publish", d)
	}
	y.leave()

	var none yielder // no runtime priority (nil): never waits
	start := time.Now()
	none.wait(ctx)
	if d := time.Since(start); d > time.Millisecond {
		t.Fatalf("a nil yielder waited %s", d)
	}
	var nilY *priorityYield
	nilY.enter()
	nilY.leave()
}
