package connector

import (
	"context"
	"errors"
	"sync"

	"github.com/rs/zerolog"
)

var errQueueClosed = errors.New("lane closed: the connector is shutting down")

// queued is an event with the runtime's per-session fields filled in.
type queued struct {
	Event
	seq uint64
}

// laneQueue is what a publisher drains (multi-producer, single-consumer).
type laneQueue interface {
	// take blocks until at least one item is queued or ctx ends, then appends up
	// to max items to buf. It returns false once the queue is closed and empty.
	take(ctx context.Context, buf []queued, max int) ([]queued, bool)
	// poll appends up to max queued items to buf without waiting.
	poll(buf []queued, max int) []queued
	close()
	depth() int
}

// highQueue never drops: a full queue blocks the producer, which is how
// backpressure reaches the upstream reader.
type highQueue struct {
	ch      chan queued
	closing chan struct{}
	once    sync.Once
	// putTurn (one slot) makes "number, then enqueue" atomic, so Connector-Seq
	// follows queue (and so publish) order even with several producers. It is
	// a channel rather than a mutex so that a producer waiting for its turn
	// behind one blocked on a full lane still gives up when its ctx ends (an
	// audit record's bounded wait, a status at shutdown).
	putTurn chan struct{}
	seq     uint64
}

func newHighQueue(capacity int) *highQueue {
	return &highQueue{ch: make(chan queued, capacity), closing: make(chan struct{}), putTurn: make(chan struct{}, 1)}
}

// put numbers the item and blocks while the queue is full; it fails only when
// ctx ends or the queue is closed.
func (q *highQueue) put(ctx context.Context, it queued) error {
	select {
	case <-q.closing:
		return errQueueClosed
	default:
	}
	select {
	case q.putTurn <- struct{}{}:
	default:
		select {
		case q.putTurn <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.closing:
			return errQueueClosed
		}
	}
	defer func() { <-q.putTurn }()
	select {
	case <-q.closing:
		return errQueueClosed
	default:
	}
	it.seq = q.seq + 1
	select {
	case q.ch <- it: // room: accepted even when ctx has already ended
		q.seq++
		return nil
	default:
	}
	select {
	case q.ch <- it:
		q.seq++
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-q.closing:
		return errQueueClosed
	}
}

func (q *highQueue) take(ctx context.Context, buf []queued, max int) ([]queued, bool) {
	select {
	case it := <-q.ch:
		buf = append(buf, it)
	case <-ctx.Done():
		return buf, false
	case <-q.closing:
		// Closed: wait for a put that began before the close (it holds
		// the turn and ends at once now, queued or refused), so nothing is
		// queued after the end is reported; then hand out what is left.
		q.putTurn <- struct{}{}
		<-q.putTurn
		select {
		case it := <-q.ch:
			buf = append(buf, it)
		default:
			return buf, false
		}
	}
	return q.poll(buf, max), true
}

func (q *highQueue) poll(buf []queued, max int) []queued {
	for len(buf) < max {
		select {
		case it := <-q.ch:
			buf = append(buf, it)
		default:
			return buf
		}
	}
	return buf
}

func (q *highQueue) close()     { q.once.Do(func() { close(q.closing) }) }
func (q *highQueue) depth() int { return len(q.ch) }

// lowQueue is a bounded ring: when full, put overwrites the oldest item and
// counts a drop, so a telemetry burst never blocks the upstream reader.
//
// The ring starts small and doubles up to its capacity as a backlog needs
// it. A lane's capacity is sized for a stall (hundreds of milliseconds of the
// highest rate) but is nearly empty the rest of the time: preallocated, 50
// robots' lanes of 8192 were 52 MB of pointers that every GC cycle scanned,
// and a heap goal twice that which each event's allocation walked through
// (BENCHMARKS.md, issue 12).
type lowQueue struct {
	mu       sync.Mutex
	items    []queued // the ring: len(items) slots, grown up to capacity
	capacity int
	head     int // index of the oldest item
	n        int
	closed   bool
	wake     chan struct{} // capacity 1: "something was queued"
	onDrop   func()
	seq      uint64 // numbered under mu, so Connector-Seq follows queue order

	// onSupersede, when set, makes a full queue keep the latest event per
	// subject (lane_latest.go); latest is its index while under pressure.
	onSupersede func()
	latest      map[string]int
}

// newLowQueue makes a queue that signals wake (capacity 1, possibly shared
// with other queues) whenever something is queued or it is closed. With
// onSupersede, a full queue replaces the queued event of the new one's
// subject, if any, before it drops the oldest (lane_latest.go).
func newLowQueue(capacity int, onDrop, onSupersede func(), wake chan struct{}) *lowQueue {
	return &lowQueue{items: make([]queued, min(capacity, lowQueueFirstSlots)), capacity: capacity,
		wake: wake, onDrop: onDrop, onSupersede: onSupersede}
}

// lowQueueFirstSlots is a new low lane's ring size before it grows.
const lowQueueFirstSlots = 16

// growLocked doubles the ring (at most to capacity), oldest item first.
// The subject index only exists when the ring is at capacity, so there is
// none to move.
func (q *lowQueue) growLocked() {
	items := make([]queued, min(2*len(q.items), q.capacity))
	k := copy(items, q.items[q.head:q.head+min(q.n, len(q.items)-q.head)])
	copy(items[k:], q.items[:q.n-k])
	q.items, q.head, q.latest = items, 0, nil
}

// put never blocks: a full queue drops its oldest item (counted), or
// supersedes the queued item of its subject (counted). It returns false
// only when the queue is closed.
func (q *lowQueue) put(it queued) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	dropped, superseded := false, false
	if q.n == len(q.items) && len(q.items) < q.capacity {
		q.growLocked()
	}
	if q.n == len(q.items) {
		switch {
		case q.onSupersede == nil:
			q.items[q.head] = queued{}
			q.head = (q.head + 1) % len(q.items)
			q.n--
			dropped = true
		case q.supersedeLocked(it):
			superseded = true
		default:
			q.dropSupersededLocked()
			dropped = true
		}
	}
	if !superseded {
		q.seq++
		it.seq = q.seq
		i := (q.head + q.n) % len(q.items)
		q.items[i] = it
		q.indexLocked(i)
		q.n++
	}
	q.mu.Unlock()
	switch {
	case dropped && q.onDrop != nil:
		q.onDrop()
	case superseded:
		q.onSupersede()
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

func (q *lowQueue) poll(buf []queued, max int) []queued {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pollLocked(buf, max)
}

func (q *lowQueue) pollLocked(buf []queued, max int) []queued {
	for q.n > 0 && len(buf) < max {
		buf = append(buf, q.items[q.head])
		q.unindexLocked(q.head)
		q.items[q.head] = queued{}
		q.head = (q.head + 1) % len(q.items)
		q.n--
	}
	q.relaxLocked()
	return buf
}

func (q *lowQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *lowQueue) depth() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// abandon empties q after the hard stop, counting every event it held as
// failed, so nothing leaves the connector unaccounted for.
func abandon(q interface {
	poll(buf []queued, max int) []queued
}, m laneMetrics, log zerolog.Logger) {
	n := 0
	buf := make([]queued, 0, batchSize)
	for {
		buf = q.poll(buf[:0], batchSize)
		if len(buf) == 0 {
			break
		}
		n += len(buf)
	}
	if n > 0 {
		m.failed.Add(float64(n))
		log.Error().Int("events", n).Msg("connector stopped before these queued events were published")
	}
}
