package connector

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// lowPump publishes the low lanes of every session through one goroutine and
// one JetStream context. Each session keeps its own bounded drop-oldest queue
// (a flood in one session never drops another's telemetry), but the pump
// drains them together: with 50 robots at 500 Hz each, one wake-up, one
// socket write and one ack subscription serve about 25 events per linger
// period instead of one wake-up per event per robot. Order within a session
// is preserved (one goroutine, FIFO queues).
//
// The low lane's delivery is best effort, and its loss is always counted and
// visible as Connector-Seq gaps, never as reordering or duplicates:
//   - While the connection is down the pump sends nothing: events wait in the
//     rings, which drop their oldest when full (connector_lane_dropped_total).
//   - A failed publish (any reason; see publish_errors.go) is not retried: a
//     retry would be stored behind newer events, and without a Nats-Msg-Id a
//     publish whose ack was lost would be stored twice. It is counted as
//     dropped too (connector_lane_dropped_total; the reason in
//     connector_publish_errors_total): the events in flight are the oldest.
//     Those are the events in flight when a connection dies (at most Window),
//     or, while JetStream refuses publishes (restarting, stream full or
//     missing), one probe per backoff step: after a failure the pump pauses
//     (50 ms doubling to 500 ms) and sends one event at a time until one is
//     acknowledged.
type lowPump struct {
	conn       *nats.Conn
	yield      yielder // waits while a high-lane publish is in flight (priority.go)
	fastBatch  bool    // publish in fast batches (publish_batch.go), else one message at a time
	mode       *modeReport
	window     int
	ackTimeout time.Duration
	linger     time.Duration
	log        zerolog.Logger
	wake       chan struct{} // shared by every registered queue

	mu       sync.RWMutex
	closed   bool // no more events will be queued: finish and return
	stopped  bool // run has returned: removals complete at once
	lanes    []*pumpLane
	byPrefix map[string]*pumpLane // "<kind>.<name>." -> lane, for remove
	leaving  map[*pumpLane]leave  // lanes being removed: drained, then forgotten
}

// pumpLane is one session's low lane as the pump sees it. The asynchronous
// sender charges each message's outcome to its pumpLane (publish_async.go).
type pumpLane struct {
	// stream is the low-lane stream the lane's subjects go to: its fast
	// batch is shared with the other lanes of that stream (publish_batch.go).
	stream string
	queue  *lowQueue
	build  func(queued) *nats.Msg
	// fill writes an event into a message the sender reuses (nil: the lane
	// has none, and every event gets a new one from build).
	fill    func(queued, *nats.Msg)
	metrics laneMetrics
	log     zerolog.Logger
}

// leave is a removal in progress: done is closed once the lane is forgotten.
type leave struct {
	prefix string
	done   chan struct{}
}

// lowSender is how the pump hands events to JetStream: one message at a time
// with PublishMsgAsync (asyncSender) or in fast batches (batchSender).
type lowSender interface {
	// message is the message to send for it: a new one, or one the sender
	// reuses for every event (it is done with it when send returns).
	message(lane *pumpLane, it queued) *nats.Msg
	waitBacklog(ctx context.Context)
	awaitTurn(ctx context.Context)
	send(ctx context.Context, msg *nats.Msg, lane *pumpLane, received time.Time)
	// idle is called when the pump found nothing to send; it returns how
	// long until it wants to be called again (0: only after new events).
	idle(ctx context.Context) time.Duration
	// release settles what lane, which the pump forgets, has in flight.
	release(ctx context.Context, lane *pumpLane)
	finish(ctx context.Context)
}

// newLowPump makes the pump; mode says how it starts publishing (fast
// batches, or one message at a time and why).
func newLowPump(conn *nats.Conn, mode *modeReport, yield yielder, window int, ackTimeout, linger time.Duration, log zerolog.Logger) *lowPump {
	return &lowPump{
		conn: conn, fastBatch: mode.mode == LowLaneFastBatch, mode: mode, yield: yield,
		window: window, ackTimeout: ackTimeout, linger: linger, log: log,
		wake: make(chan struct{}, 1), byPrefix: map[string]*pumpLane{}, leaving: map[*pumpLane]leave{},
	}
}

// add registers one session's low lane. prefix is "<kind>.<name>.".
func (p *lowPump) add(prefix string, l *pumpLane) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l.metrics.depth.track(l.queue.depth)
	p.lanes = append(p.lanes, l)
	p.byPrefix[prefix] = l
}

// remove takes one session's low lane out of the pump, for a session that
// stops while others run. The caller has closed the lane's queue. The pump
// publishes what is still queued in it, then forgets the lane and closes the
// returned channel. Acks that arrive later are still charged to the lane's
// metrics. The channel is closed at once when prefix is unknown or the pump
// has stopped. While NATS is away the lane waits like the others (nothing is
// sent into a dead connection): the channel closes once its events are handed
// to nats.go, or at the pump's hard stop, which counts the rest as failed.
func (p *lowPump) remove(prefix string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.byPrefix[prefix]
	if l == nil || p.stopped {
		done := make(chan struct{})
		close(done)
		return done
	}
	if lv, ok := p.leaving[l]; ok {
		return lv.done // removed twice: the same removal
	}
	lv := leave{prefix: prefix, done: make(chan struct{})}
	p.leaving[l] = lv
	// The queue's close already woke the pump, possibly before the lane was
	// marked: wake it again so it sees the mark.
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return lv.done
}

// snapshot copies the lanes into buf and lists those marked for removal. A
// lane marked here had its queue closed before: a poll that comes after the
// snapshot and finds it short of a batch has emptied it for good.
func (p *lowPump) snapshot(buf, leaving []*pumpLane) (lanes, marked []*pumpLane, closed bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	lanes = append(buf[:0], p.lanes...)
	marked = leaving[:0]
	for l := range p.leaving {
		marked = append(marked, l)
	}
	return lanes, marked, p.closed
}

// forget drops drained lanes that were marked for removal and completes their
// removal.
func (p *lowPump) forget(drained []*pumpLane) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range drained {
		lv := p.leaving[l]
		delete(p.leaving, l)
		p.lanes = slices.DeleteFunc(p.lanes, func(x *pumpLane) bool { return x == l })
		if p.byPrefix[lv.prefix] == l { // not a new lane added under the same prefix since
			delete(p.byPrefix, lv.prefix)
		}
		close(lv.done)
	}
}

// stop marks the pump as stopped and completes every removal in progress.
func (p *lowPump) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	for l, lv := range p.leaving {
		delete(p.leaving, l)
		close(lv.done)
	}
}

// close tells the pump to publish what is queued and return. Call it after
// the lanes are closed.
func (p *lowPump) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run publishes until every registered lane is closed and drained, or ctx ends
// (the hard stop after the drain deadline).
func (p *lowPump) run(ctx context.Context) error {
	defer p.stop()
	var sender lowSender
	var err error
	if p.fastBatch {
		sender, err = startBatchSender(ctx, p.conn, p.window, p.ackTimeout, p.mode, p.log)
	} else {
		sender, err = startAsyncSender(ctx, p.conn, nil, p.window, p.ackTimeout, false, p.log)
	}
	if err != nil {
		return err
	}
	buf := make([]queued, 0, batchSize)
	var lanes, marked, drained []*pumpLane
	var closed bool
	next := 0 // round-robin start, so no session always goes first
	for ctx.Err() == nil {
		sender.waitBacklog(ctx)
		// Events wait in the rings, not in hand, while NATS is away or
		// refusing: there the bound and drop-oldest apply.
		sender.awaitTurn(ctx)
		lanes, marked, closed = p.snapshot(lanes, marked)
		drained = drained[:0]
		polled := 0
		for k := range lanes {
			l := lanes[(next+k)%len(lanes)]
			buf = l.queue.poll(buf[:0], batchSize)
			for i := range buf {
				if ctx.Err() != nil { // hard stop: account for the rest, send nothing
					l.metrics.failed.Add(float64(len(buf) - i))
					break
				}
				received := buf[i].Received
				msg := sender.message(l, buf[i])
				buf[i] = queued{}
				p.yield.wait(ctx)
				sender.send(ctx, msg, l, received)
			}
			polled += len(buf)
			if len(buf) < batchSize && len(marked) > 0 && slices.Contains(marked, l) {
				drained = append(drained, l)
			}
		}
		if len(drained) > 0 {
			for _, l := range drained {
				sender.release(ctx, l)
			}
			p.forget(drained)
		}
		if len(lanes) > 0 {
			next = (next + 1) % len(lanes)
		}
		if polled > 0 {
			sender.idle(ctx) // commit the batches of lanes that went quiet while others did not
			if p.linger > 0 && polled < batchSize/4 {
				time.Sleep(p.linger) // let a trickle gather into one write
			}
			continue
		}
		if closed {
			break // nothing was left in any lane
		}
		p.sleep(ctx, sender.idle(ctx))
	}
	for _, l := range p.lanesNow() {
		abandon(l.queue, l.metrics, l.log) // only after the hard stop is anything left
	}
	sender.finish(ctx)
	return nil
}

// sleep waits for new events, or until the sender's idle work is due.
func (p *lowPump) sleep(ctx context.Context, due time.Duration) {
	var timer <-chan time.Time
	if due > 0 {
		t := time.NewTimer(due)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-p.wake:
	case <-timer:
	case <-ctx.Done():
	}
}

func (p *lowPump) lanesNow() []*pumpLane {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]*pumpLane(nil), p.lanes...)
}
