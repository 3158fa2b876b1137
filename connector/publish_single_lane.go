package connector

// The single-lane measurement mode (Options.SingleLane, CONNECTOR_SINGLE_LANE;
// BENCHMARKS.md): every event goes through the high lane, which then publishes
// with the low lanes' window instead of one at a time. It exists to measure
// what the lanes buy; production never takes this path.
//
// Publishes are asynchronous with at most window unacknowledged: much faster
// than one at a time, but a publish lost in a dying connection is retried
// (its Nats-Msg-Id makes a copy harmless) and so can be stored after the ones
// behind it; Connector-Seq shows the receive order.

import (
	"context"
)

// runSingleLane publishes the lane asynchronously with at most p.window acks
// outstanding, failures retried in failure order.
func (p *publisher) runSingleLane(ctx context.Context, link *linkWatch) error {
	sender, err := startAsyncSender(ctx, p.conn, link, p.window, p.ackTimeout, true, p.log)
	if err != nil {
		return err
	}
	// Every message of this sender is charged to this lane.
	lane := &pumpLane{build: p.build, metrics: p.metrics, log: p.log}
	buf := make([]queued, 0, batchSize)
	for {
		var ok bool
		buf, ok = p.queue.take(ctx, buf[:0], batchSize)
		for i := range buf {
			received := buf[i].Received
			msg := p.build(buf[i])
			buf[i] = queued{}
			sender.send(ctx, msg, lane, received)
		}
		if !ok {
			break
		}
		sender.waitBacklog(ctx)
	}
	abandon(p.queue, p.metrics, p.log)
	sender.finish(ctx)
	return nil
}
