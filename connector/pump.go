package connector

import (
	"context"
	"strings"
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
//   - A failed publish (any reason; see publisher.go) is not retried: a retry
//     would be stored behind newer events, and without a Nats-Msg-Id a publish
//     whose ack was lost would be stored twice. It is counted as dropped
//     too (connector_lane_dropped_total; the reason in
//     connector_publish_errors_total): the events in flight are the oldest.
//     Those are the events in flight when a connection dies (at most Window),
//     or, while JetStream refuses publishes (restarting, stream full or
//     missing), one probe per backoff step: after a failure the pump pauses
//     (50 ms doubling to 2 s) and sends one event at a time until one is
//     acknowledged.
type lowPump struct {
	conn       *nats.Conn
	window     int
	ackTimeout time.Duration
	linger     time.Duration
	log        zerolog.Logger
	wake       chan struct{} // shared by every registered queue

	mu       sync.RWMutex
	closed   bool // no more events will be queued: finish and return
	lanes    []*pumpLane
	byPrefix map[string]*pumpLane // "<kind>.<name>." -> lane, for ack callbacks
}

type pumpLane struct {
	queue   *lowQueue
	build   func(queued) *nats.Msg
	metrics laneMetrics
	log     zerolog.Logger
}

func newLowPump(conn *nats.Conn, window int, ackTimeout, linger time.Duration, log zerolog.Logger) *lowPump {
	return &lowPump{
		conn: conn, window: window, ackTimeout: ackTimeout, linger: linger, log: log,
		wake: make(chan struct{}, 1), byPrefix: map[string]*pumpLane{},
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

// laneOf finds the lane of a published message by its subject's first two tokens.
func (p *lowPump) laneOf(subject string) *pumpLane {
	i := strings.IndexByte(subject, '.')
	if i < 0 {
		return nil
	}
	j := strings.IndexByte(subject[i+1:], '.')
	if j < 0 {
		return nil
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.byPrefix[subject[:i+1+j+1]]
}

func (p *lowPump) snapshot() (lanes []*pumpLane, closed bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]*pumpLane(nil), p.lanes...), p.closed
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
	sender, err := startAsyncSender(ctx, p.conn, nil, p.window, p.ackTimeout, false, func(subject string) (laneMetrics, zerolog.Logger, bool) {
		if l := p.laneOf(subject); l != nil {
			return l.metrics, l.log, true
		}
		return laneMetrics{}, p.log, false
	}, p.log)
	if err != nil {
		return err
	}
	buf := make([]queued, 0, batchSize)
	next := 0 // round-robin start, so no session always goes first
	for ctx.Err() == nil {
		sender.waitBacklog(ctx)
		// Events wait in the rings, not in hand, while NATS is away or
		// refusing: there the bound and drop-oldest apply.
		sender.awaitTurn(ctx)
		lanes, closed := p.snapshot()
		polled := 0
		for k := range lanes {
			l := lanes[(next+k)%len(lanes)]
			buf = l.queue.poll(buf[:0], batchSize)
			for i := range buf {
				if ctx.Err() != nil { // hard stop: account for the rest, send nothing
					l.metrics.failed.Add(float64(len(buf) - i))
					break
				}
				msg := l.build(buf[i])
				buf[i] = queued{}
				sender.send(ctx, msg, l.metrics)
			}
			polled += len(buf)
		}
		if len(lanes) > 0 {
			next = (next + 1) % len(lanes)
		}
		if polled > 0 {
			if p.linger > 0 && polled < batchSize/4 {
				time.Sleep(p.linger) // let a trickle gather into one write
			}
			continue
		}
		if closed {
			break // nothing was left in any lane
		}
		select {
		case <-p.wake:
		case <-ctx.Done():
		}
	}
	for _, l := range p.lanesNow() {
		abandon(l.queue, l.metrics, l.log) // only after the hard stop is anything left
	}
	sender.finish(ctx)
	return nil
}

func (p *lowPump) lanesNow() []*pumpLane {
	lanes, _ := p.snapshot()
	return lanes
}
