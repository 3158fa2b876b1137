package connector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// publisher drains the high lane of one session into JetStream (the low lanes
// share the lowPump).
//
// Failure handling, by what JetStream answered (publishErrorReason names each;
// every failed attempt counts in connector_publish_errors_total{reason}):
//
//   - no_responders: nothing answered the publish. JetStream is starting (a
//     restarting server) or no stream captures the subject. Transient: retried
//     with backoff (50 ms doubling to 2 s). Before each retry the publisher asks
//     JetStream which stream holds the subject; when JetStream answers that none
//     does, the reason is stream_missing instead.
//   - stream_missing: the stream was deleted. The connector does not recreate it
//     behind the operator's back (a deletion may be deliberate, and the runtime
//     provisions every stream at start): it keeps retrying with an error log per
//     attempt and the metric, so the high lane fills and the upstream reader
//     pauses until the stream is back (provisioned by a restart or by hand).
//   - timeout / disconnected: no ack within AckTimeout, or the connection was
//     lost with the publish unacknowledged. The event may or may not be stored.
//     Retried once the connection is up again; the high lane's Nats-Msg-Id (the
//     upstream identity or a synthetic per-run id) makes the copy a duplicate
//     that JetStream drops within the stream's duplicates window.
//   - stream_full: a limit with discard-new (max messages, bytes or messages per
//     subject) refused the event. It clears when old messages age out or the
//     operator raises the limit: retried, with an error log per attempt, so the
//     high lane turns it into backpressure instead of loss.
//   - too_large: the event exceeds the server's max_payload or the stream's
//     max_msg_size. Permanent: no retry can fix the event. It is not stored;
//     it is logged at error level with its subject, Nats-Msg-Id, Connector-Seq
//     and size, and counted in connector_publish_failed_total. On the high lane
//     consumers see the loss as a Connector-Seq gap. There is no dead-letter
//     stream: a copy of an event too large to store cannot be stored either,
//     and the log line carries everything needed to find it upstream.
//   - wrong_last_sequence: the event publishes set no Nats-Expected-Last-*
//     header, so JetStream cannot answer it; if it ever did, retrying would get
//     the same answer: permanent, like too_large. (Nor does KV state use
//     compare-and-set: Store.Put is last-writer-wins, see store.go.)
//   - invalid: a subject or header the client library refuses. Emit checks
//     subjects, so this cannot happen; if it did: permanent, like too_large.
//   - other: anything else (a server storage error, an invalid ack): retried.
//
// With window 1 (the high lane's default) each event is stored before the next
// is sent, so the stream order is the receive order even across a failure; a
// retry blocks the lane, which is how a dead NATS becomes backpressure on the
// upstream reader instead of loss. With a larger window publishes are
// asynchronous with at most window unacknowledged: much faster, but a publish
// lost in a dying connection can be stored after the ones behind it
// (Connector-Seq shows the receive order).
//
// The low lane (pump.go) never retries: see lowPump.
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
	p.metrics.depth.track(p.queue.depth)
	link := watchLink(p.conn)
	defer link.stop()
	if p.window <= 1 {
		js, err := jetstream.New(p.conn)
		if err != nil {
			return fmt.Errorf("jetstream context: %w", err)
		}
		p.runOrdered(ctx, js, link)
		return nil
	}
	return p.runAsync(ctx, link)
}

// errLinkLost ends the ack wait of a synchronous publish whose connection dropped.
var errLinkLost = fmt.Errorf("%w while waiting for the ack", nats.ErrDisconnected)

// linkWatch cuts the ack wait of synchronous publishes short when the NATS
// connection drops. A request in flight on a dead link is never answered:
// waiting out the whole ack timeout would hold the high lane for seconds after
// a sub-second outage. Cut short, the publish is retried (same Nats-Msg-Id) as
// soon as the connection is back.
type linkWatch struct {
	statuses      chan nats.Status
	stopListening func()
	done          chan struct{}

	conn *nats.Conn

	mu      sync.Mutex
	waiting context.CancelCauseFunc // the publish waiting for its ack, if any
	epoch   uint64                  // the client's reconnect count when it was sent
}

func watchLink(conn *nats.Conn) *linkWatch {
	w := &linkWatch{conn: conn, statuses: conn.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for range w.statuses { // closed by stop
			// The waiting publish went out on the connection of its epoch.
			// That connection is gone when the client is not connected now,
			// or has reconnected since (a fast failover to another server).
			// An event of an outage over before the publish began matches
			// neither and is ignored.
			connected, reconnects := conn.IsConnected(), conn.Stats().Reconnects
			w.mu.Lock()
			if w.waiting != nil && (!connected || reconnects > w.epoch) {
				w.waiting(errLinkLost)
			}
			w.mu.Unlock()
		}
	}()
	stopListening := func() { conn.RemoveStatusListener(w.statuses) }
	w.stopListening = stopListening
	return w
}

// stop ends the watch and waits for its goroutine.
func (w *linkWatch) stop() {
	if w == nil {
		return
	}
	w.stopListening()
	<-w.done
}

// ackContext returns the context one synchronous publish waits under: it ends
// at the ack timeout, with ctx, or when the connection drops.
func (w *linkWatch) ackContext(ctx context.Context, ackTimeout time.Duration) (context.Context, func()) {
	cctx, cancelCause := context.WithCancelCause(ctx)
	actx, cancelTimeout := context.WithTimeout(cctx, ackTimeout)
	if w == nil {
		return actx, func() { cancelTimeout(); cancelCause(nil) }
	}
	epoch := w.conn.Stats().Reconnects
	w.mu.Lock()
	w.waiting, w.epoch = cancelCause, epoch
	w.mu.Unlock()
	return actx, func() {
		w.mu.Lock()
		w.waiting = nil
		w.mu.Unlock()
		cancelTimeout()
		cancelCause(nil)
	}
}

// runOrdered publishes one event at a time, waiting for its ack. It takes one
// event at a time too (a batch would not save anything next to a round trip
// per event), so while NATS is away the connector holds at most the lane's
// capacity plus the one event in retry.
func (p *publisher) runOrdered(ctx context.Context, js jetstream.JetStream, link *linkWatch) {
	buf := make([]queued, 0, 1)
	for {
		var ok bool
		buf, ok = p.queue.take(ctx, buf[:0], 1)
		for i := range buf {
			received := buf[i].Received
			msg := p.build(buf[i])
			buf[i] = queued{}
			err := publishSync(ctx, js, link, msg, received, p.ackTimeout, p.metrics)
			if err != nil {
				retryPublish(ctx, js, p.conn, link, msg, received, err, p.ackTimeout, p.metrics, p.log)
			}
		}
		if !ok {
			abandon(p.queue, p.metrics, p.log) // only after the hard stop is anything left
			return
		}
	}
}

// publishSync publishes msg and waits at most ackTimeout for its ack; a stored
// event is counted and its latency observed.
func publishSync(ctx context.Context, js jetstream.JetStream, link *linkWatch, msg *nats.Msg, received time.Time,
	ackTimeout time.Duration, m laneMetrics,
) error {
	m.inflight.Inc()
	actx, done := link.ackContext(ctx, ackTimeout)
	// No retries inside nats.go: "no responders" comes back at once and
	// retryPublish handles it with its own backoff and diagnosis.
	_, err := js.PublishMsg(actx, msg, jetstream.WithRetryAttempts(0))
	if err != nil && errors.Is(err, context.Canceled) && errors.Is(context.Cause(actx), errLinkLost) {
		err = errLinkLost
	}
	done()
	m.inflight.Dec()
	if err != nil {
		return err
	}
	m.published.Inc()
	m.latency.Observe(time.Since(received).Seconds())
	return nil
}

// runAsync publishes asynchronously with at most window acks outstanding.
func (p *publisher) runAsync(ctx context.Context, link *linkWatch) error {
	sender, err := startAsyncSender(ctx, p.conn, link, p.window, p.ackTimeout, true,
		func(string) (laneMetrics, zerolog.Logger, bool) { return p.metrics, p.log, true }, p.log)
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
			sender.send(ctx, msg, p.metrics)
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

// asyncSender publishes with nats.go's asynchronous API: at most window acks
// outstanding, acks counted through a callback (no per-message channels or
// hand-offs). A failed publish is either republished by a retrier goroutine,
// in failure order (retry: the high lane with a window, whose Nats-Msg-Ids
// make copies harmless), or counted as failed and not retried (the low lane).
// Either way a failure closes the gate: sending pauses with backoff and
// resumes with one probe at a time until a publish is acknowledged again, so a
// JetStream that answers every publish with an error (no responders while it
// restarts, a full stream) leaves the events in the bounded lanes rather than
// burning through them.
type asyncSender struct {
	conn        *nats.Conn
	js          jetstream.JetStream
	gate        *sendGate
	failed      *failedQueue // nil when failures are not retried
	retrierDone chan struct{}
	// refusedLog reports events JetStream refuses permanently, sampled (a
	// stream of oversized telemetry must not flood the log; the metric counts all).
	refusedLog zerolog.Logger
}

// laneOfSubject returns the metrics and logger that a message's outcome is
// charged to; false when the subject belongs to no known lane.
type laneOfSubject func(subject string) (laneMetrics, zerolog.Logger, bool)

// startAsyncSender starts publishing with at most window acks outstanding.
// With retry, failed publishes are retried in failure order by a retrier
// goroutine whose ack waits link (nil: none) cuts short when the connection
// drops; without it, a failure is final (the low lane's rule).
func startAsyncSender(ctx context.Context, conn *nats.Conn, link *linkWatch, window int, ackTimeout time.Duration, retry bool,
	laneOf laneOfSubject, log zerolog.Logger,
) (*asyncSender, error) {
	a := &asyncSender{conn: conn, gate: newSendGate(), retrierDone: make(chan struct{}),
		refusedLog: log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second})}
	if retry {
		a.failed = newFailedQueue(window, func(msg *nats.Msg, err error) {
			if m, log, ok := laneOf(msg.Subject); ok {
				m.failed.Inc()
				log.Error().Err(err).Str("subject", msg.Subject).Msg("publish failed after the connector stopped retrying")
			}
		})
	}
	js, err := jetstream.New(conn,
		// nats.go's window is ours: PublishMsgAsync waits while it is full.
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, msg *nats.Msg, _ *jetstream.PubAck) {
			if m, _, ok := laneOf(msg.Subject); ok {
				m.inflight.Dec()
				m.published.Inc()
				observeLatency(m, msg)
			}
			if lost, reopened := a.gate.succeed(); reopened {
				log.Info().Int("failed", lost).Msg("publishing resumed: JetStream acknowledges again")
			}
		}),
		// Called with nats.go's lock held (or from its reconnect handler):
		// must not block.
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
			m, _, ok := laneOf(msg.Subject)
			if ok {
				m.inflight.Dec()
			}
			a.lost(msg, err, m, ok, log)
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
				if m, log, ok := laneOf(f.msg.Subject); ok {
					retryPublish(ctx, js, conn, link, f.msg, receivedOf(f.msg), f.err, ackTimeout, m, log)
				} else {
					// Emit checks every subject against its session, so this
					// cannot happen; say so loudly if it does.
					log.Error().Err(f.err).Str("subject", f.msg.Subject).Msg("failed publish of no known session; not retried")
				}
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

// send hands one message to nats.go, waiting for its turn and while the
// window is full.
func (a *asyncSender) send(ctx context.Context, msg *nats.Msg, m laneMetrics) {
	a.awaitTurn(ctx)
	if ctx.Err() != nil {
		// The hard stop came while waiting: account for it, send nothing.
		m.failed.Inc()
		return
	}
	for {
		m.inflight.Inc()
		_, err := a.js.PublishMsgAsync(msg)
		if err == nil {
			return
		}
		m.inflight.Dec()
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil {
			continue // the window stayed full for the stall wait: keep waiting
		}
		if ctx.Err() != nil {
			m.failed.Inc() // the hard stop, not JetStream: no error reason, no pause
			return
		}
		a.lost(msg, err, m, true, a.refusedLog)
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
func (a *asyncSender) lost(msg *nats.Msg, err error, m laneMetrics, known bool, log zerolog.Logger) {
	reason := publishErrorReason(err)
	permanent := permanentReason(reason)
	if known && a.failed == nil { // the retrier counts the reasons of what it retries
		m.errors.WithLabelValues(reason).Inc()
	}
	if !permanent && a.gate.fail() {
		log.Warn().Err(err).Str("reason", reason).
			Msg("publish failed; publishing pauses and probes until JetStream acknowledges again")
	}
	switch {
	case a.failed != nil:
		a.failed.add(msg, err)
	case !known:
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

// abandonRest counts what is still queued once the retrier has ended (the
// hard stop came while failures kept arriving): each is a late failure.
func (q *failedQueue) abandonRest() {
	q.mu.Lock()
	q.closed = true
	rest := q.items
	q.items = nil
	q.mu.Unlock()
	for _, f := range rest {
		q.late(f.msg, f.err)
	}
}

const (
	retryFirstWait = 50 * time.Millisecond
	retryMaxWait   = 2 * time.Second
)

// retryPublish republishes msg synchronously until it is stored, the error is
// permanent, or ctx ends; every failed attempt is counted by reason and
// logged, and the final outcome is counted.
func retryPublish(ctx context.Context, js jetstream.JetStream, conn *nats.Conn, link *linkWatch, msg *nats.Msg, received time.Time,
	err error, ackTimeout time.Duration, m laneMetrics, log zerolog.Logger,
) {
	wait := retryFirstWait
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			// The hard stop, not JetStream, ended this attempt: no error reason.
			m.failed.Inc()
			log.Error().Err(err).Str("subject", msg.Subject).
				Msg("connector stopped while an event was still unacknowledged")
			return
		}
		reason := publishErrorReason(err)
		if reason == reasonNoResponders && streamMissing(ctx, js, msg.Subject) {
			reason = reasonStreamMissing
		}
		m.errors.WithLabelValues(reason).Inc()
		if permanentReason(reason) {
			m.failed.Inc()
			log.Error().Err(err).Str("reason", reason).Str("subject", msg.Subject).
				Str("msg_id", msg.Header.Get(subjects.HeaderMsgID)).Str("connector_seq", msg.Header.Get(subjects.HeaderSeq)).
				Int("bytes", len(msg.Data)).Msg("JetStream refused the event permanently; it is not stored")
			return
		}
		m.retries.Inc()
		ev := log.Warn()
		switch reason {
		case reasonStreamMissing:
			ev = log.Error().Str("action", "provision the stream (restart the connector) to resume")
		case reasonStreamFull:
			ev = log.Error().Str("action", "raise the stream's limits or let messages age out to resume")
		}
		ev.Err(err).Str("reason", reason).Str("subject", msg.Subject).Int("attempt", attempt).
			Dur("wait", wait).Msg("publish not acknowledged; retrying")
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			continue
		}
		waitConnected(ctx, conn)
		if err = publishSync(ctx, js, link, msg, received, ackTimeout, m); err == nil {
			return
		}
		wait = min(wait*2, retryMaxWait)
	}
}

// waitConnected waits until conn is connected or ctx ends: a publish while it
// reconnects would only sit in nats.go's reconnect buffer.
func waitConnected(ctx context.Context, conn *nats.Conn) {
	for !conn.IsConnected() && ctx.Err() == nil {
		select {
		case <-time.After(gateWait):
		case <-ctx.Done():
		}
	}
}

// streamMissing asks JetStream whether any stream captures subject; only a
// clear "none" counts (a JetStream that does not answer is restarting).
func streamMissing(ctx context.Context, js jetstream.JetStream, subject string) bool {
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := js.StreamNameBySubject(lctx, subject)
	return errors.Is(err, jetstream.ErrStreamNotFound)
}

// Reasons of a failed publish attempt (label of connector_publish_errors_total).
const (
	reasonNoResponders      = "no_responders"
	reasonStreamMissing     = "stream_missing"
	reasonTimeout           = "timeout"
	reasonDisconnected      = "disconnected"
	reasonStreamFull        = "stream_full"
	reasonTooLarge          = "too_large"
	reasonWrongLastSequence = "wrong_last_sequence"
	reasonInvalid           = "invalid"
	reasonOther             = "other"
)

// publishErrorReason classifies a publish error (see the publisher comment
// for how each reason is handled).
func publishErrorReason(err error) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders):
		return reasonNoResponders
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return reasonTimeout
	case errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionDraining):
		return reasonDisconnected
	case errors.Is(err, nats.ErrMaxPayload):
		return reasonTooLarge
	case errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrBadHeaderMsg):
		return reasonInvalid
	case errors.As(err, &apiErr):
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamMessageExceedsMaximum:
			return reasonTooLarge
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant:
			return reasonWrongLastSequence
		case jsErrCodeStoreFailed:
			// The server's discard-new refusals, by their text (they share the code
			// with I/O errors, which are retried as "other").
			d := apiErr.Description
			if strings.Contains(d, "maximum messages") || strings.Contains(d, "maximum bytes") {
				return reasonStreamFull
			}
			if strings.Contains(d, "message too large") {
				return reasonTooLarge
			}
		}
	}
	return reasonOther
}

// jsErrCodeStoreFailed is the server's JSStreamStoreFailedF ("{err}").
const jsErrCodeStoreFailed jetstream.ErrorCode = 10077

// permanentReason reports reasons no retry can fix: the event itself (or a
// precondition nothing sets) is unacceptable to the server.
func permanentReason(reason string) bool {
	switch reason {
	case reasonTooLarge, reasonWrongLastSequence, reasonInvalid:
		return true
	}
	return false
}

// receivedOf reads the Connector-Received header back, for messages handed
// around as *nats.Msg only (zero when absent).
func receivedOf(msg *nats.Msg) time.Time {
	if v := msg.Header[subjects.HeaderReceived]; len(v) == 1 {
		if t, err := time.Parse(time.RFC3339Nano, v[0]); err == nil {
			return t
		}
	}
	return time.Time{}
}

// observeLatency records Connector-Received to ack for an acknowledged
// asynchronous publish. time.Parse takes its RFC 3339 fast path (tens of ns),
// so this is cheap enough for every low-lane ack.
func observeLatency(m laneMetrics, msg *nats.Msg) {
	if t := receivedOf(msg); !t.IsZero() {
		m.latency.Observe(time.Since(t).Seconds())
	}
}
