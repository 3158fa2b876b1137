package connector

// Asynchronous publishing with nats.go's PublishMsgAsync: the low lanes'
// pump (pump.go) and the single-lane measurement mode
// (publish_single_lane.go) send through an asyncSender.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// asyncSender publishes with nats.go's asynchronous API: at most window acks
// outstanding, acks counted through a callback (no per-message channels or
// hand-offs). A failed publish is either republished by a retrier goroutine,
// in failure order (retry: the single-lane mode's high lane, whose
// Nats-Msg-Ids make copies harmless), or counted as failed and not retried
// (the low lane). Either way a failure closes the gate: sending pauses with
// backoff and resumes with one probe at a time until a publish is
// acknowledged again, so a JetStream that answers every publish with an error
// (no responders while it restarts, a full stream) leaves the events in the
// bounded lanes rather than burning through them.
type asyncSender struct {
	conn        *nats.Conn
	js          jetstream.JetStream
	gate        *sendGate
	flights     flights
	failed      *failedQueue // nil when failures are not retried
	retrierDone chan struct{}
	// refusedLog reports events JetStream refuses permanently, sampled (a
	// stream of oversized telemetry must not flood the log; the metric counts all).
	refusedLog zerolog.Logger
}

// flight is what the sender remembers of one message from PublishMsgAsync to
// its ack or error. nats.go hands its callbacks the very *nats.Msg that was
// published, so the outcome is charged to the lane it was sent for (even one
// the pump has since forgotten) without reading anything back out of the
// message.
type flight struct {
	lane     *pumpLane // whose metrics and logger the outcome is charged to
	received time.Time // Event.Received, for the latency histogram and retries
}

// flights are the sender's messages in flight. Each entry is taken out once,
// by whichever of the ack callback, the error callback or a failed
// PublishMsgAsync comes first, and only the taker accounts for the message:
// a publish nats.go reports twice (a failed write racing a reconnect's reset)
// is counted once.
type flights struct {
	mu sync.Mutex
	m  map[*nats.Msg]flight
}

func (f *flights) put(msg *nats.Msg, fl flight) {
	f.mu.Lock()
	f.m[msg] = fl
	f.mu.Unlock()
}

// take may be called with nats.go's lock held: it never blocks for long.
func (f *flights) take(msg *nats.Msg) (flight, bool) {
	f.mu.Lock()
	fl, ok := f.m[msg]
	if ok {
		delete(f.m, msg)
	}
	f.mu.Unlock()
	return fl, ok
}

// startAsyncSender starts publishing with at most window acks outstanding.
// With retry, failed publishes are retried in failure order by a retrier
// goroutine (owned by the sender: finish waits for it) whose ack waits link
// (nil: none) cuts short when the connection drops; without it, a failure is
// final (the low lane's rule).
func startAsyncSender(ctx context.Context, conn *nats.Conn, link *linkWatch, window int, ackTimeout time.Duration, retry bool,
	log zerolog.Logger,
) (*asyncSender, error) {
	a := &asyncSender{conn: conn, gate: newSendGate(), retrierDone: make(chan struct{}),
		flights:    flights{m: make(map[*nats.Msg]flight, window)},
		refusedLog: log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second})}
	if retry {
		a.failed = newFailedQueue(window, func(f failedMsg) {
			f.lane.metrics.failed.Inc()
			f.lane.log.Error().Err(f.err).Str("subject", f.msg.Subject).Msg("publish failed after the connector stopped retrying")
		})
	}
	js, err := jetstream.New(conn,
		// nats.go's window is ours: PublishMsgAsync waits while it is full.
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, msg *nats.Msg, _ *jetstream.PubAck) {
			if fl, ok := a.flights.take(msg); ok {
				m := &fl.lane.metrics
				m.inflight.Dec()
				m.published.Inc()
				m.latency.Observe(time.Since(fl.received).Seconds())
			}
			if lost, reopened := a.gate.succeed(); reopened {
				log.Info().Int("failed", lost).Msg("publishing resumed: JetStream acknowledges again")
			}
		}),
		// Called with nats.go's lock held (or from its reconnect handler):
		// must not block.
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
			fl, ok := a.flights.take(msg)
			if !ok {
				return // send saw the error first and accounted for it
			}
			fl.lane.metrics.inflight.Dec()
			a.lost(msg, fl, err, log)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	a.js = js
	if a.failed == nil {
		close(a.retrierDone)
		return a, nil
	}
	go func() {
		defer close(a.retrierDone)
		for {
			batch, open := a.failed.take(ctx)
			for _, f := range batch {
				retryPublish(ctx, js, conn, link, f.msg, f.received, f.err, ackTimeout, f.lane.metrics, f.lane.log)
				a.failed.done()
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
	if a.failed == nil {
		return
	}
	for a.failed.backlog() >= a.failed.limit && ctx.Err() == nil {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// gateWait is how often a paused sender looks at the connection and the gate.
const gateWait = 5 * time.Millisecond

// awaitTurn returns when msg may be sent: the connection is up (nothing goes
// into nats.go's reconnect buffer, where it would outlive its ack timeout and
// be stored after newer events), and the gate is closed, or open with its
// backoff over and no publish outstanding (one probe at a time).
func (a *asyncSender) awaitTurn(ctx context.Context) {
	for ctx.Err() == nil {
		if a.conn.IsConnected() {
			until, open := a.gate.state()
			if !open || (!time.Now().Before(until) && a.js.PublishAsyncPending() == 0) {
				return
			}
		}
		select {
		case <-time.After(gateWait):
		case <-ctx.Done():
		}
	}
}

// send hands one message of lane, read upstream at received, to nats.go,
// waiting for its turn and while the window is full.
// message implements lowSender: PublishMsgAsync keeps each message until
// its ack (retries, and the flights are keyed by it), so each is new.
func (a *asyncSender) message(lane *pumpLane, it queued) *nats.Msg { return lane.build(it) }

func (a *asyncSender) send(ctx context.Context, msg *nats.Msg, lane *pumpLane, received time.Time) {
	m := &lane.metrics
	a.awaitTurn(ctx)
	if ctx.Err() != nil {
		// The hard stop came while waiting: account for it, send nothing.
		m.failed.Inc()
		return
	}
	fl := flight{lane: lane, received: received}
	for {
		m.inflight.Inc()
		// Recorded before the publish: its ack may arrive before
		// PublishMsgAsync returns.
		a.flights.put(msg, fl)
		_, err := a.js.PublishMsgAsync(msg)
		if err == nil {
			return
		}
		if _, mine := a.flights.take(msg); !mine {
			return // an error callback came first and accounted for it
		}
		m.inflight.Dec()
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil {
			continue // the window stayed full for the stall wait: keep waiting
		}
		if ctx.Err() != nil {
			m.failed.Inc() // the hard stop, not JetStream: no error reason, no pause
			return
		}
		a.lost(msg, fl, err, a.refusedLog)
		return
	}
}

// lost handles a failed asynchronous publish. A permanent refusal (the event
// itself is unacceptable, e.g. too large) is the event's fault, not
// JetStream's: it does not pause publishing. Any other failure pauses it until
// JetStream acknowledges again. With retries the event goes to the retrier
// (which also counts permanent refusals); without (the low lane) it is
// counted: failed if refused permanently, else dropped (a Connector-Seq gap).
// Called from nats.go's callbacks: must not block.
func (a *asyncSender) lost(msg *nats.Msg, fl flight, err error, log zerolog.Logger) {
	reason := publishErrorReason(err)
	permanent := permanentReason(reason)
	m := &fl.lane.metrics
	if a.failed == nil { // the retrier counts the reasons of what it retries
		m.errors.WithLabelValues(reason).Inc()
	}
	if !permanent && a.gate.fail() {
		log.Warn().Err(err).Str("reason", reason).
			Msg("publish failed; publishing pauses and probes until JetStream acknowledges again")
	}
	switch {
	case a.failed != nil:
		a.failed.add(failedMsg{msg: msg, err: err, flight: fl})
	case permanent:
		m.failed.Inc()
		a.refusedLog.Error().Err(err).Str("reason", reason).Str("subject", msg.Subject).
			Str("connector_seq", msg.Header.Get(subjects.HeaderSeq)).Int("bytes", len(msg.Data)).
			Msg("JetStream refused the event permanently; it is not stored")
	default:
		// The low lane does not retry: a retried event would be stored
		// behind newer ones, and without a Nats-Msg-Id a publish whose ack
		// was lost would be stored twice. The loss shows as a Connector-Seq
		// gap, counted with the drops.
		m.dropped.Inc()
	}
}

// idle implements lowSender: acks settle each message by themselves.
func (a *asyncSender) idle(context.Context) time.Duration { return 0 }

// release implements lowSender: a forgotten lane's acks are still charged to it.
func (a *asyncSender) release(context.Context, *pumpLane) {}

// finish waits for the outstanding acks and the retries they cause.
func (a *asyncSender) finish(ctx context.Context) {
	select {
	case <-a.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
	if a.failed != nil {
		a.failed.close()
	}
	<-a.retrierDone
	if a.failed != nil {
		a.failed.abandonRest()
	}
}

// sendGate is the asynchronous senders' circuit breaker: closed while
// publishes succeed; a failure opens it for a backoff (doubling while
// failures go on), and the first acknowledged publish closes it again.
type sendGate struct {
	open     atomic.Bool // read on every ack without the lock
	mu       sync.Mutex
	wait     time.Duration
	until    time.Time
	failures int
}

func newSendGate() *sendGate { return &sendGate{} }

// fail records a failure; it reports whether the gate was closed until now.
func (g *sendGate) fail() (opened bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	switch {
	case !g.open.Load():
		g.open.Store(true)
		g.wait = retryFirstWait
		opened = true
	case !now.Before(g.until):
		g.wait = min(2*g.wait, retryMaxWait) // a probe failed
	}
	g.until = now.Add(g.wait)
	g.failures++
	return opened
}

// succeed closes an open gate; it reports the failures while it was open.
func (g *sendGate) succeed() (failures int, reopened bool) {
	if !g.open.Load() {
		return 0, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.open.Load() {
		return 0, false
	}
	g.open.Store(false)
	failures, g.failures = g.failures, 0
	return failures, true
}

func (g *sendGate) state() (until time.Time, open bool) {
	if !g.open.Load() {
		return time.Time{}, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until, g.open.Load()
}

// failedQueue collects messages whose publish failed, in failure order.
type failedQueue struct {
	mu      sync.Mutex
	items   []failedMsg
	pending int // taken but not yet retried, for backlog
	closed  bool
	wake    chan struct{}
	limit   int             // backlog at which senders pause (waitBacklog)
	late    func(failedMsg) // a failure after close: counted, not retried
}

// failedMsg is a failed publish with what its retry needs: the lane to
// charge and the receive time (the latency of a stored retry counts from it).
type failedMsg struct {
	msg *nats.Msg
	err error
	flight
}

func newFailedQueue(limit int, late func(failedMsg)) *failedQueue {
	return &failedQueue{wake: make(chan struct{}, 1), limit: max(limit, 1), late: late}
}

// add may be called with nats.go's lock held: it never blocks.
func (q *failedQueue) add(f failedMsg) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.late(f)
		return
	}
	q.items = append(q.items, f)
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

// abandonRest counts what is still queued once the retrier has ended (the
// hard stop came while failures kept arriving): each is a late failure.
func (q *failedQueue) abandonRest() {
	q.mu.Lock()
	q.closed = true
	rest := q.items
	q.items = nil
	q.mu.Unlock()
	for _, f := range rest {
		q.late(f)
	}
}
