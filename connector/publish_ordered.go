package connector

// The high lane's production path: one event at a time, each stored before the
// next is sent, and retried until stored. The asynchronous senders' retrier
// (publish_async.go) republishes failures the same way.

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

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
			p.yield.enter() // the low lanes step aside until it is stored
			err := publishSync(ctx, js, link, msg, received, p.ackTimeout, p.metrics)
			if err != nil {
				retryPublish(ctx, js, p.conn, link, msg, received, err, p.ackTimeout, p.metrics, p.log)
			}
			p.yield.leave()
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

// The backoff between retries, and of the asynchronous senders' gate. The
// cap is short because a JetStream election answers "no responders" until
// the moment it ends, and the next retry is when the lane resumes: with a
// 2 s cap exits came up to 2 s after the new leader. A retry while
// disconnected is not sent (waitConnected), so the cap costs nothing then.
const (
	retryFirstWait = 50 * time.Millisecond
	retryMaxWait   = 500 * time.Millisecond
	// Each failed attempt is counted, but after the first few only one
	// attempt per retryLogEvery is logged.
	retryLogFirst = 3
	retryLogEvery = 10 * time.Second
)

// retryPublish republishes msg synchronously until it is stored, the error is
// permanent, or ctx ends; every failed attempt is counted by reason and
// logged, and the final outcome is counted.
func retryPublish(ctx context.Context, js jetstream.JetStream, conn *nats.Conn, link *linkWatch, msg *nats.Msg, received time.Time,
	err error, ackTimeout time.Duration, m laneMetrics, log zerolog.Logger,
) {
	wait := retryFirstWait
	var logged time.Time
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
		if attempt <= retryLogFirst || time.Since(logged) >= retryLogEvery {
			logged = time.Now()
			ev := log.Warn()
			switch reason {
			case reasonStreamMissing:
				ev = log.Error().Str("action", "provision the stream (restart the connector) to resume")
			case reasonStreamFull:
				ev = log.Error().Str("action", "raise the stream's limits or let messages age out to resume")
			}
			ev.Err(err).Str("reason", reason).Str("subject", msg.Subject).Int("attempt", attempt).
				Dur("wait_ms", wait).Msg("publish not acknowledged; retrying")
		}
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
