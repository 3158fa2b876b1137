package connector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// publisher drains the high lane of one session into JetStream (the low lanes
// share the lowPump). Every ack is checked
// in publish order, and a failed or timed-out publish is republished (the same
// Nats-Msg-Id of a high-lane event makes its retry idempotent) until it is stored, the error is
// permanent, or the drain deadline passes. While a retry is under way the lane
// stops draining, so a dead NATS turns into backpressure (high lane) or drops of
// the oldest telemetry (low lane), never into silent loss.
//
// With window 1 (the high lane's default) each event is stored before the next
// is sent, so the stream order is the receive order even across a failure. With
// a larger window, publishes are asynchronous with at most window unacknowledged:
// much faster, but a publish lost in a dying connection can be stored after the
// ones behind it (Connector-Seq shows the receive order), and a retry of an
// event without Nats-Msg-Id (low-lane telemetry) can store it twice.
type publisher struct {
	conn       *nats.Conn
	queue      laneQueue
	window     int
	ackTimeout time.Duration
	build      func(queued) *nats.Msg
	metrics    laneMetrics
	log        zerolog.Logger
}

// batchSize is how many queued events one pass takes, to amortize locking.
const batchSize = 128

// run publishes until the queue is closed and drained, or until ctx ends (the
// hard stop after the drain deadline).
func (p *publisher) run(ctx context.Context) error {
	if p.window <= 1 {
		js, err := jetstream.New(p.conn)
		if err != nil {
			return fmt.Errorf("jetstream context: %w", err)
		}
		p.runOrdered(ctx, js)
		return nil
	}
	return p.runAsync(ctx)
}

// runOrdered publishes one event at a time, waiting for its ack.
func (p *publisher) runOrdered(ctx context.Context, js jetstream.JetStream) {
	buf := make([]queued, 0, batchSize)
	for {
		var ok bool
		buf, ok = p.queue.take(ctx, buf[:0], batchSize)
		for i := range buf {
			msg := p.build(buf[i])
			buf[i] = queued{}
			actx, cancel := context.WithTimeout(ctx, p.ackTimeout)
			_, err := js.PublishMsg(actx, msg)
			cancel()
			if err == nil {
				p.metrics.published.Inc()
				continue
			}
			p.retry(ctx, js, msg, err)
		}
		p.metrics.depth.Set(float64(p.queue.depth()))
		if !ok {
			abandon(p.queue, p.metrics, p.log) // only after the hard stop is anything left
			return
		}
	}
}

// runAsync publishes asynchronously with at most window acks outstanding.
func (p *publisher) runAsync(ctx context.Context) error {
	sender, err := startAsyncSender(ctx, p.conn, p.window, p.ackTimeout,
		func(string) (laneMetrics, zerolog.Logger, bool) { return p.metrics, p.log, true })
	if err != nil {
		return err
	}
	buf := make([]queued, 0, batchSize)
	for {
		var ok bool
		buf, ok = p.queue.take(ctx, buf[:0], batchSize)
		for i := range buf {
			msg := p.build(buf[i])
			buf[i] = queued{}
			sender.send(ctx, msg)
		}
		p.metrics.depth.Set(float64(p.queue.depth()))
		if !ok {
			break
		}
		sender.waitBacklog(ctx)
	}
	abandon(p.queue, p.metrics, p.log)
	sender.finish(ctx)
	return nil
}

// asyncSender publishes with nats.go's asynchronous API: at most window acks
// outstanding, acks counted through a callback (no per-message channels or
// hand-offs), failures republished in failure order by a retrier goroutine.
type asyncSender struct {
	js          jetstream.JetStream
	failed      *failedQueue
	retrierDone chan struct{}
}

// laneOfSubject returns the metrics and logger that a message's outcome is
// charged to; false when the subject belongs to no known lane.
type laneOfSubject func(subject string) (laneMetrics, zerolog.Logger, bool)

func startAsyncSender(ctx context.Context, conn *nats.Conn, window int, ackTimeout time.Duration, laneOf laneOfSubject) (*asyncSender, error) {
	failed := newFailedQueue(window, func(msg *nats.Msg, err error) {
		if m, log, ok := laneOf(msg.Subject); ok {
			m.failed.Inc()
			log.Error().Err(err).Str("subject", msg.Subject).Msg("publish failed after the connector stopped retrying")
		}
	})
	js, err := jetstream.New(conn,
		// nats.go's window is ours: PublishMsgAsync waits while it is full.
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, msg *nats.Msg, _ *jetstream.PubAck) {
			if m, _, ok := laneOf(msg.Subject); ok {
				m.published.Inc()
			}
		}),
		// Called with nats.go's lock held: must not block.
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
			failed.add(msg, err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	a := &asyncSender{js: js, failed: failed, retrierDone: make(chan struct{})}
	go func() {
		defer close(a.retrierDone)
		for {
			batch, open := failed.take(ctx)
			for _, f := range batch {
				if m, log, ok := laneOf(f.msg.Subject); ok {
					retryPublish(ctx, js, f.msg, f.err, ackTimeout, m, log)
				} else {
					// Emit checks every subject against its session, so this
					// cannot happen; say so loudly if it does.
					log.Error().Err(f.err).Str("subject", f.msg.Subject).Msg("failed publish of no known session; not retried")
				}
				failed.done()
			}
			if !open {
				return
			}
		}
	}()
	return a, nil
}

// waitBacklog pauses the caller while failed publishes await their retry, so
// a dead NATS keeps events in the bounded lanes (where drop-oldest applies)
// instead of in an ever-growing retry list.
func (a *asyncSender) waitBacklog(ctx context.Context) {
	for a.failed.backlog() >= a.failed.limit && ctx.Err() == nil {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// send hands one message to nats.go, waiting while the window is full.
func (a *asyncSender) send(ctx context.Context, msg *nats.Msg) {
	for {
		_, err := a.js.PublishMsgAsync(msg)
		switch {
		case err == nil:
			return
		case errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil:
			continue // the window stayed full for the stall wait: keep waiting
		default:
			a.failed.add(msg, err)
			return
		}
	}
}

// finish waits for the outstanding acks and the retries they cause.
func (a *asyncSender) finish(ctx context.Context) {
	select {
	case <-a.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
	a.failed.close()
	<-a.retrierDone
}

// failedQueue collects messages whose publish failed, in failure order.
type failedQueue struct {
	mu      sync.Mutex
	items   []failedMsg
	pending int // taken but not yet retried, for backlog
	closed  bool
	wake    chan struct{}
	limit   int                          // backlog at which senders pause (waitBacklog)
	late    func(msg *nats.Msg, e error) // a failure after close: counted, not retried
}

type failedMsg struct {
	msg *nats.Msg
	err error
}

func newFailedQueue(limit int, late func(*nats.Msg, error)) *failedQueue {
	return &failedQueue{wake: make(chan struct{}, 1), limit: max(limit, 1), late: late}
}

// add may be called with nats.go's lock held: it never blocks.
func (q *failedQueue) add(msg *nats.Msg, err error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.late(msg, err)
		return
	}
	q.items = append(q.items, failedMsg{msg, err})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// backlog is how many failures wait for or are in their retry.
func (q *failedQueue) backlog() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) + q.pending
}

// done marks one taken failure as retried.
func (q *failedQueue) done() {
	q.mu.Lock()
	q.pending--
	q.mu.Unlock()
}

// take waits for failures and returns them all; open is false once the queue
// is closed and empty (or ctx ended).
func (q *failedQueue) take(ctx context.Context) (batch []failedMsg, open bool) {
	for {
		q.mu.Lock()
		batch, q.items = q.items, nil
		q.pending += len(batch)
		closed := q.closed
		q.mu.Unlock()
		if len(batch) > 0 {
			return batch, true
		}
		if closed {
			return nil, false
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (q *failedQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

const (
	retryFirstWait = 50 * time.Millisecond
	retryMaxWait   = 2 * time.Second
)

func (p *publisher) retry(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, err error) {
	retryPublish(ctx, js, msg, err, p.ackTimeout, p.metrics, p.log)
}

// retryPublish republishes msg synchronously until it is stored, the error is
// permanent, or ctx ends; every outcome is counted in m and logged.
func retryPublish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, err error,
	ackTimeout time.Duration, m laneMetrics, log zerolog.Logger,
) {
	wait := retryFirstWait
	for attempt := 1; ; attempt++ {
		if permanentPublishError(err) {
			m.failed.Inc()
			log.Error().Err(err).Str("subject", msg.Subject).Int("bytes", len(msg.Data)).
				Msg("JetStream refused the event permanently; it is not stored")
			return
		}
		if ctx.Err() != nil {
			m.failed.Inc()
			log.Error().Err(err).Str("subject", msg.Subject).
				Msg("connector stopped while an event was still unacknowledged")
			return
		}
		m.retries.Inc()
		log.Warn().Err(err).Str("subject", msg.Subject).Int("attempt", attempt).
			Dur("wait", wait).Msg("publish not acknowledged; retrying")
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			continue
		}
		actx, cancel := context.WithTimeout(ctx, ackTimeout)
		_, err = js.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			m.published.Inc()
			return
		}
		wait = min(wait*2, retryMaxWait)
	}
}

// permanentPublishError reports errors that no retry can fix: the event itself
// is unacceptable to the server.
func permanentPublishError(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) ||
		errors.Is(err, nats.ErrBadHeaderMsg) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
	}
	return false
}
