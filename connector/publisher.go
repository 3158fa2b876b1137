package connector

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// publisher drains the high lane of one session into JetStream (the low lanes
// share the lowPump, pump.go).
//
// In production it publishes one event at a time (publish_ordered.go): each
// event is stored before the next is sent, so the stream order is the receive
// order even across a failure, and a retry blocks the lane, which is how a
// dead NATS becomes backpressure on the upstream reader instead of loss.
// publish_errors.go says how each kind of failure is handled.
//
// With window > 1 it publishes asynchronously instead (publish_single_lane.go):
// that is the single-lane measurement mode only (Options.SingleLane).
type publisher struct {
	conn       *nats.Conn
	queue      laneQueue
	window     int
	ackTimeout time.Duration
	build      func(queued) *nats.Msg
	yield      *priorityYield // marks each publish in flight for the low lanes (priority.go)
	metrics    laneMetrics
	log        zerolog.Logger
}

// batchSize is how many queued events one pass takes, to amortize locking.
const batchSize = 128

// run publishes until the queue is closed and drained, or until ctx ends (the
// hard stop after the drain deadline).
func (p *publisher) run(ctx context.Context) error {
	p.metrics.depth.track(p.queue.depth)
	link := watchLink(p.conn)
	defer link.stop()
	if p.window > 1 {
		return p.runSingleLane(ctx, link)
	}
	js, err := jetstream.New(p.conn)
	if err != nil {
		return fmt.Errorf("jetstream context: %w", err)
	}
	p.runOrdered(ctx, js, link)
	return nil
}
