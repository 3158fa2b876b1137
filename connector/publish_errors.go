package connector

// Failure handling, by what JetStream answered (publishErrorReason names each;
// every failed attempt counts in connector_publish_errors_total{reason}):
//
//   - no_responders: nothing answered the publish. JetStream is starting (a
//     restarting server) or no stream captures the subject. Transient: retried
//     with backoff (50 ms doubling to 500 ms). Before each retry the publisher asks
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
// "Retried" applies to the high lane (publish_ordered.go). The low lane (pump.go)
// never retries: a failed telemetry publish is counted and shows as a
// Connector-Seq gap.

import (
	"context"
	"errors"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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

// publishErrorReason classifies a publish error (the comment at the top of
// this file says how each reason is handled).
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
