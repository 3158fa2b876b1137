package connector

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// publisher drains one lane of one session into JetStream with asynchronous
// publishes. At most window publishes are unacknowledged at a time; every ack is
// checked in publish order, and a failed or timed-out one is republished (the
// same Nats-Msg-Id makes the retry idempotent) until it is stored, the error is
// permanent, or the drain deadline passes. While a retry is under way the lane
// stops draining, so a dead NATS turns into backpressure (high lane) or drops of
// the oldest telemetry (low lane), never into silent loss.
type publisher struct {
	js         jetstream.JetStream
	queue      laneQueue
	window     int
	ackTimeout time.Duration
	build      func(queued) *nats.Msg
	metrics    laneMetrics
	log        zerolog.Logger
}

type inflight struct {
	msg *nats.Msg
	fut jetstream.PubAckFuture
	err error // the publish itself failed: retry without waiting for an ack
}

// batchSize is how many queued events one pass takes, to amortize locking.
const batchSize = 128

// run publishes until the queue is closed and drained, or until ctx ends (the
// hard stop after the drain deadline).
func (p *publisher) run(ctx context.Context) {
	pending := make(chan inflight, p.window)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		for f := range pending {
			p.settle(ctx, f)
		}
	}()

	buf := make([]queued, 0, batchSize)
	for {
		var ok bool
		buf, ok = p.queue.take(ctx, buf[:0], batchSize)
		for i := range buf {
			msg := p.build(buf[i])
			buf[i] = queued{}
			fut, err := p.js.PublishMsgAsync(msg)
			select {
			case pending <- inflight{msg: msg, fut: fut, err: err}:
			case <-ctx.Done():
				p.metrics.failed.Inc()
				p.log.Error().Str("subject", msg.Subject).Msg("connector stopped before a queued event was published")
			}
		}
		p.metrics.depth.Set(float64(p.queue.depth()))
		if !ok {
			break
		}
	}
	close(pending)
	<-ackerDone
}

// settle waits for one publish's ack and retries it until it is stored.
func (p *publisher) settle(ctx context.Context, f inflight) {
	err := f.err
	if err == nil {
		select {
		case <-f.fut.Ok():
			p.metrics.published.Inc()
			return
		case err = <-f.fut.Err():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	p.retry(ctx, f.msg, err)
}

const (
	retryFirstWait = 50 * time.Millisecond
	retryMaxWait   = 2 * time.Second
)

func (p *publisher) retry(ctx context.Context, msg *nats.Msg, err error) {
	wait := retryFirstWait
	for attempt := 1; ; attempt++ {
		if permanentPublishError(err) {
			p.metrics.failed.Inc()
			p.log.Error().Err(err).Str("subject", msg.Subject).Int("bytes", len(msg.Data)).
				Msg("JetStream refused the event permanently; it is not stored")
			return
		}
		if ctx.Err() != nil {
			p.metrics.failed.Inc()
			p.log.Error().Err(err).Str("subject", msg.Subject).
				Msg("connector stopped while an event was still unacknowledged")
			return
		}
		p.metrics.retries.Inc()
		p.log.Warn().Err(err).Str("subject", msg.Subject).Int("attempt", attempt).
			Dur("wait", wait).Msg("publish not acknowledged; retrying")
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			continue
		}
		actx, cancel := context.WithTimeout(ctx, p.ackTimeout)
		_, err = p.js.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			p.metrics.published.Inc()
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
