package connector

// Fast batch publishing of the low lanes (nats-server 2.14+, streams with
// AllowBatchPublish): each low-lane stream gets one long-lived batch, which
// the sessions publishing into it share (the pump sends one event at a time,
// so each session's order is kept). One batch per stream rather than per
// session: the server acknowledges every 500 / (open batches) messages at
// most, and the publisher may not run more than two flow acks ahead, so 50
// robots with a batch each stalled the one pump goroutine on 50 round trips
// per pass (data p99 884 ms at N = 50, BENCHMARKS.md). Messages carry no
// per-message ack: the server acknowledges every flow-th stored message
// (flow control), and the batch ends with one commit acknowledgement. That
// removes most of the per-message work of both the server and the connector
// (one ack parse and callback per message with PublishMsgAsync).
//
// Loss stays visible as with per-message publishing: Connector-Seq gaps for
// consumers, connector_lane_dropped_total for operators. Batches run in
// gap-fail mode, so the server stores nothing after a gap or a refused
// message and the stored events are always a prefix of the batch:
//   - A refused message (stream full, too large): the server commits what
//     came before it and names it; those count as published, the refused
//     one and every one sent after it as dropped. Exact.
//   - A batch that ends otherwise (the connection dropped, a flow ack never
//     came within the ack timeout): every event sent after the last flow
//     ack counts as dropped. Some of them may have been stored (as with a
//     lost per-message ack, but up to one flow window, half
//     CONNECTOR_PUBLISH_WINDOW, per failed batch): the counter is then an
//     upper bound, the Connector-Seq gaps stay exact.
//
// Either way the next event starts a new batch after the same
// pause-and-probe as per-message publishing.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Low-lane publishing modes, as /status and the start-up log show them.
const (
	LowLaneFastBatch  = "fast_batch"
	LowLanePerMessage = "per_message"
)

// batchIdle is how long a lane's batch stays open without a new event
// before it is committed: it settles the metrics of the last events (their
// flow ack may not come otherwise) well before the server's own batch
// timeout (10 s in nats-server 2.14+) would abandon it.
const batchIdle = 100 * time.Millisecond

// batchSender publishes the low lanes' events in fast batches, one per
// stream. It is used by the pump's goroutine only (FastPublisher is not safe
// for concurrent use); only the control-channel errors arrive on another
// goroutine (streamBatch.mu). When a stream refuses batches after the
// start-up check found it willing (an operator turned AllowBatchPublish off),
// it falls back to per-message publishing for good.
type batchSender struct {
	conn       *nats.Conn
	js         jetstream.JetStream
	gate       *sendGate
	flow       jetstreamext.FastPublishFlowControl
	batches    map[string]*streamBatch // by stream
	fallback   *asyncSender
	perMessage bool // fallen back to fallback for good
	mode       *modeReport
	log        zerolog.Logger
	refusedLog zerolog.Logger
	// reused is the message every low-lane event is built in (message):
	// AddMsg has copied it into the connection's buffer when it returns.
	reused nats.Msg
}

// streamBatch is one stream's open batch and the events sent in it and not
// settled yet, in batch order.
type streamBatch struct {
	fp      jetstreamext.FastPublisher
	pending []flight // batch sequences settled+1, settled+2, ...
	settled uint64   // every batch sequence up to this one is accounted for
	// adds counts the events added; idle notes when it last saw it move
	// (addsSeen at seenAt), instead of a clock read per event.
	adds, addsSeen uint64
	seenAt         time.Time

	mu        sync.Mutex
	serverErr error  // the last error the server reported on the control channel
	refusedAt uint64 // the batch sequence the server refused (0: none): it stored those before
}

// modeReport is the low lane's publishing mode, read by /status.
type modeReport struct {
	mu   sync.Mutex
	mode string
	why  string
}

func (r *modeReport) set(mode, why string) {
	r.mu.Lock()
	r.mode, r.why = mode, why
	r.mu.Unlock()
}

func (r *modeReport) get() (mode, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mode, r.why
}

// startBatchSender prepares fast batch publishing with at most window
// messages unacknowledged per stream (two flow acks of window/2; the server
// may ask for acks more often), and the per-message sender it falls back to.
func startBatchSender(ctx context.Context, conn *nats.Conn, window int, ackTimeout time.Duration, mode *modeReport, log zerolog.Logger) (*batchSender, error) {
	js, err := jetstream.New(conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	fallback, err := startAsyncSender(ctx, conn, nil, window, ackTimeout, false, log)
	if err != nil {
		return nil, err
	}
	flow := uint16(min(max(window/2, 1), 1<<15))
	return &batchSender{
		conn: conn, js: js, gate: newSendGate(), fallback: fallback, mode: mode, log: log,
		flow:       jetstreamext.FastPublishFlowControl{Flow: flow, MaxOutstandingAcks: 2, AckTimeout: ackTimeout},
		batches:    map[string]*streamBatch{},
		reused:     nats.Msg{Header: make(nats.Header, 2)},
		refusedLog: log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second}),
	}, nil
}

func (s *batchSender) waitBacklog(ctx context.Context) { s.fallback.waitBacklog(ctx) }

// message implements lowSender: a lane's event in the reused message when it
// goes into a batch, else (per message) in a new one.
func (s *batchSender) message(lane *pumpLane, it queued) *nats.Msg {
	if s.perMessage || lane.stream == "" || lane.fill == nil {
		return lane.build(it)
	}
	lane.fill(it, &s.reused)
	return &s.reused
}

// owned is msg, or a copy of it when it is the reused message: for the
// per-message fallback, which keeps its messages until their acks.
func (s *batchSender) owned(msg *nats.Msg) *nats.Msg {
	if msg != &s.reused {
		return msg
	}
	hdr := make(nats.Header, len(msg.Header))
	for k, vs := range msg.Header {
		hdr[k] = slices.Clone(vs)
	}
	return &nats.Msg{Subject: msg.Subject, Data: msg.Data, Header: hdr}
}

// awaitTurn returns once the connection is up and the gate lets a batch
// start or go on (after a failure: once its backoff is over; the next event
// starts a new batch, whose first message waits for the server's answer,
// the probe).
func (s *batchSender) awaitTurn(ctx context.Context) {
	if s.perMessage {
		s.fallback.awaitTurn(ctx)
		return
	}
	for ctx.Err() == nil {
		if s.conn.IsConnected() {
			until, open := s.gate.state()
			if !open || !time.Now().Before(until) {
				return
			}
		}
		select {
		case <-time.After(gateWait):
		case <-ctx.Done():
		}
	}
}

// send adds msg, an event of lane read upstream at received, to the batch
// of the lane's stream, starting one when none is open.
func (s *batchSender) send(ctx context.Context, msg *nats.Msg, lane *pumpLane, received time.Time) {
	if s.perMessage || lane.stream == "" { // a kind that declares no low-lane stream: no batch to share
		s.fallback.send(ctx, s.owned(msg), lane, received)
		return
	}
	m := &lane.metrics
	s.awaitTurn(ctx)
	if ctx.Err() != nil {
		m.failed.Inc() // the hard stop came while waiting: send nothing
		return
	}
	b := s.batches[lane.stream]
	if b == nil {
		b = &streamBatch{}
		fp, err := jetstreamext.NewFastPublisher(s.js, s.flow, jetstreamext.WithFastPublisherErrorHandler(b.noteServerError))
		if err != nil { // only an invalid option fails here
			m.failed.Inc()
			s.log.Error().Err(err).Msg("cannot start a fast batch")
			return
		}
		b.fp = fp
		s.batches[lane.stream] = b
	}
	m.inflight.Inc()
	b.pending = append(b.pending, flight{lane: lane, received: received})
	ack, err := b.fp.AddMsg(msg)
	b.adds++
	if err != nil {
		if len(b.pending) == 1 && b.settled == 0 && batchesRefused(err) {
			// The stream refused to start the batch, so nothing of it was
			// stored: publish this event the other way, not lose it.
			delete(s.batches, lane.stream)
			m.inflight.Dec()
			s.fallBack(ctx, err)
			s.fallback.send(ctx, s.owned(msg), lane, received)
			return
		}
		s.end(ctx, lane, b, err)
		return
	}
	s.settle(b, ack.AckSequence)
	if lost, reopened := s.gate.succeed(); reopened {
		s.log.Info().Int("failed", lost).Msg("publishing resumed: JetStream acknowledges again")
	}
}

// settle accounts for the events of b up to batch sequence upTo, which the
// server has stored, each to its lane.
func (s *batchSender) settle(b *streamBatch, upTo uint64) {
	if upTo <= b.settled {
		return
	}
	n := int(min(upTo-b.settled, uint64(len(b.pending))))
	now := time.Now()
	for _, f := range b.pending[:n] {
		m := &f.lane.metrics
		m.latency.Observe(now.Sub(f.received).Seconds())
		m.published.Inc()
		m.inflight.Dec()
	}
	b.settled += uint64(n)
	clear(b.pending[:n]) // drop the lane references
	b.pending = b.pending[n:]
	if len(b.pending) == 0 {
		b.pending = b.pending[:0:0] // let the backing array go
	}
}

// unsettle charges every event of b not settled yet to its lane: failed at
// the hard stop, else dropped.
func (s *batchSender) unsettle(ctx context.Context, b *streamBatch) {
	hard := ctx.Err() != nil
	for _, f := range b.pending {
		m := &f.lane.metrics
		m.inflight.Dec()
		if hard {
			m.failed.Inc()
		} else {
			m.dropped.Inc()
		}
	}
	b.pending = nil
}

// end closes the batch of lane's stream after err (from lane's send): what
// was not settled is dropped (or failed, at the hard stop), and a JetStream
// failure pauses publishing.
func (s *batchSender) end(ctx context.Context, lane *pumpLane, b *streamBatch, err error) {
	delete(s.batches, lane.stream)
	refusedAt, cause := b.takeServerError()
	if cause != nil && (errors.Is(err, jetstreamext.ErrBatchClosed) || batchesRefused(cause)) {
		// The server said why it ended the batch. (A refusal while Add
		// waited for a flow ack surfaces as that wait's timeout.)
		err = cause
	}
	if refusedAt > 0 {
		s.settle(b, refusedAt-1) // stored before the refusal; nothing after it is
	}
	n := len(b.pending)
	hard := ctx.Err() != nil
	s.unsettle(ctx, b)
	if hard {
		return
	}
	if batchesRefused(err) {
		s.fallBack(ctx, err)
		return
	}
	reason := publishErrorReason(err)
	lane.metrics.errors.WithLabelValues(reason).Inc()
	if !permanentReason(reason) && s.gate.fail() {
		s.log.Warn().Err(err).Str("reason", reason).Int("events", n).
			Msg("fast batch failed; its unacknowledged events count as dropped; publishing pauses and probes until JetStream acknowledges again")
	} else {
		s.refusedLog.Error().Err(err).Str("reason", reason).Int("events", n).Msg("fast batch ended by a refusal; its unacknowledged events count as dropped")
	}
	if !b.fp.IsClosed() {
		// A publish that failed on the client leaves the batch open with its
		// control subscription: end it (the server sees a gap and drops it).
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, _ = b.fp.Close(cctx)
		cancel()
	}
}

// batchesRefused reports the stream's refusal of fast batches.
func batchesRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeFastBatchNotEnabled
}

// fallBack switches to per-message publishing for good, after a stream
// refused fast batches, and commits the other lanes' batches.
func (s *batchSender) fallBack(ctx context.Context, err error) {
	s.perMessage = true
	s.mode.set(LowLanePerMessage, "a low-lane stream refused fast batches (AllowBatchPublish was turned off)")
	s.log.Error().Err(err).Msg("a low-lane stream refuses fast batch publishing; publishing one message at a time from now on")
	s.closeAll(ctx)
}

// idle commits the batches without an event for batchIdle; it returns how
// long until the next open batch is due (0: none is open).
func (s *batchSender) idle(ctx context.Context) time.Duration {
	var next time.Duration
	now := time.Now()
	for stream, b := range s.batches {
		if b.adds != b.addsSeen || b.seenAt.IsZero() {
			b.addsSeen, b.seenAt = b.adds, now // added to since the last look: idle from now
		}
		if wait := batchIdle - now.Sub(b.seenAt); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			continue
		}
		s.commit(ctx, stream, b)
	}
	return next
}

// commit ends a stream's batch on purpose and settles it with the commit ack.
func (s *batchSender) commit(ctx context.Context, stream string, b *streamBatch) {
	delete(s.batches, stream)
	ack, err := b.fp.Close(ctx)
	if err != nil {
		// Nobody's send failed: charge the reason to the oldest event's lane.
		if len(b.pending) > 0 {
			s.end(ctx, b.pending[0].lane, b, fmt.Errorf("commit fast batch: %w", err))
		} else if ctx.Err() == nil {
			s.log.Warn().Err(err).Str("stream", stream).Msg("fast batch commit failed with every event already acknowledged; nothing lost")
		}
		return
	}
	s.settle(b, ack.BatchSize)
	if n := len(b.pending); n > 0 { // the commit stored fewer than were sent
		b.pending[0].lane.metrics.errors.WithLabelValues(reasonOther).Inc()
		s.unsettle(ctx, b)
		s.log.Warn().Uint64("stored", ack.BatchSize).Int("missing", n).Msg("fast batch committed short; the missing events count as dropped")
	}
}

// release implements lowSender: a forgotten lane's events in a shared batch
// are settled with the batch, charged to the lane all the same.
func (s *batchSender) release(context.Context, *pumpLane) {}

func (s *batchSender) closeAll(ctx context.Context) {
	for stream, b := range s.batches {
		s.commit(ctx, stream, b)
	}
}

// finish commits every open batch and waits for the fallback's acks.
func (s *batchSender) finish(ctx context.Context) {
	s.closeAll(ctx)
	s.fallback.finish(ctx)
}

// noteServerError keeps what the server reported on the control channel.
// FastPublisher calls it with its own lock held: it must not block.
func (b *streamBatch) noteServerError(err error) {
	var seq uint64
	// A refused message ends a gap-fail batch: the server commits what came
	// before it, and says which one in the error (the FastPublisher's text,
	// pinned with its version; TestPublishStreamFullRetriesUntilRoom checks it).
	if _, scanErr := fmt.Sscanf(err.Error(), "error processing batch at sequence %d:", &seq); scanErr != nil {
		seq = 0
	}
	b.mu.Lock()
	b.serverErr = err
	if seq > 0 && b.refusedAt == 0 {
		b.refusedAt = seq
	}
	b.mu.Unlock()
}

func (b *streamBatch) takeServerError() (refusedAt uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	refusedAt, err = b.refusedAt, b.serverErr
	b.serverErr, b.refusedAt = nil, 0
	return refusedAt, err
}
