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
// Nats-Msg-Id makes the retry idempotent) until it is stored, the error is
// permanent, or the drain deadline passes. While a retry is under way the lane
// stops draining, so a dead NATS turns into backpressure (high lane) or drops of
// the oldest telemetry (low lane), never into silent loss.
//
// With window 1 (the high lane's default) each event is stored before the next
// is sent, so the stream order is the receive order even across a failure. With
// a larger window, publishes are asynchronous with at most window unacknowledged:
// much faster, but a publish lost in a dying connection can be stored after the
// ones behind it (Connector-Seq shows the receive order).
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
	}
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
	failed := newFailedQueue()
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
				m, log, ok := laneOf(f.msg.Subject)
				if !ok {
					continue // not ours: nothing to charge or retry
				}
				retryPublish(ctx, js, f.msg, f.err, ackTimeout, m, log)
			}
			if !open {
				return
			}
		}
	}()
	return a, nil
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
	mu     sync.Mutex
	items  []failedMsg
	closed bool
	wake   chan struct{}
}

type failedMsg struct {
	msg *nats.Msg
	err error
}

func newFailedQueue() *failedQueue { return &failedQueue{wake: make(chan struct{}, 1)} }

func (q *failedQueue) add(msg *nats.Msg, err error) {
	q.mu.Lock()
	q.items = append(q.items, failedMsg{msg, err})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take waits for failures and returns them all; open is false once the queue
// is closed and empty (or ctx ended).
func (q *failedQueue) take(ctx context.Context) (batch []failedMsg, open bool) {
	for {
		q.mu.Lock()
		batch, q.items = q.items, nil
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
