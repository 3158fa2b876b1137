package connector

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// priorityYield lets the low lanes step aside while a high-lane event is on
// its way to JetStream. The lanes use separate connections, but they meet in
// the server (one ingest queue, one CPU budget) and on this machine's cores:
// a telemetry flood sent while an exit signal waits for its ack delays that
// ack. So the low-lane pump, before each send, waits while a high-lane
// publish is in flight, up to maxYield per publish (a high-lane publish
// stuck in its ack timeout must not stall telemetry for long).
//
// The cost when no high-lane publish is in flight is one atomic load per
// low-lane event.
type priorityYield struct {
	busy    atomic.Int64  // high-lane publishes in flight
	started atomic.Uint64 // high-lane publishes started so far
	waiters atomic.Int32  // pump waits in progress: leave signals only then

	mu   sync.Mutex
	free chan struct{} // closed when busy drops to zero while someone waits
}

// maxYield bounds the low lanes' wait for one high-lane publish: a few idle
// round trips, far below any ack timeout.
const maxYield = 5 * time.Millisecond

func newPriorityYield() *priorityYield { return &priorityYield{free: make(chan struct{})} }

// enter marks a high-lane publish in flight (nil: nobody yields).
func (y *priorityYield) enter() {
	if y == nil {
		return
	}
	y.started.Add(1)
	y.busy.Add(1)
}

// leave marks its end, waking the waiting pump when none is left.
func (y *priorityYield) leave() {
	if y == nil {
		return
	}
	if y.busy.Add(-1) == 0 && y.waiters.Load() > 0 {
		y.mu.Lock()
		close(y.free)
		y.free = make(chan struct{})
		y.mu.Unlock()
	}
}

// yielder is one pump's view: the last high-lane publish it waited for.
type yielder struct {
	y      *priorityYield
	waited uint64
}

// wait returns at once when no high-lane publish is in flight, or when the
// pump already waited for the latest one; otherwise when none is left,
// maxYield passed, or ctx ended.
func (w *yielder) wait(ctx context.Context) {
	y := w.y
	if y == nil || y.busy.Load() == 0 {
		return
	}
	latest := y.started.Load()
	if latest == w.waited {
		return
	}
	w.waited = latest
	y.waiters.Add(1)
	defer y.waiters.Add(-1)
	y.mu.Lock()
	free := y.free
	y.mu.Unlock()
	if y.busy.Load() == 0 { // it ended before we were counted as waiting
		return
	}
	t := time.NewTimer(maxYield)
	defer t.Stop()
	select {
	case <-free:
	case <-t.C:
	case <-ctx.Done():
	}
}
