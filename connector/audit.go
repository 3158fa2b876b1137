package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// AuditRecord is one record of the audit stream: one command that reached a
// session, on <kind>.<name>.audit.<command> (stream CONNECTOR_AUDIT,
// Connector-Type audit; schemas/connector/audit.json). The runtime records
// every command it receives for a session, refused or not; a source records
// with Host.Audit the commands it sends upstream on its own initiative, so
// the stream accounts for everything that was asked of the upstream.
type AuditRecord struct {
	// Command is the command's name (the last token of its subject).
	Command string `json:"command"`
	// Received is when the command arrived, or when the source issued it
	// (published in UTC, RFC 3339 with nanoseconds).
	Received time.Time `json:"received"`
	// DurationMS is how long the command took, in milliseconds.
	DurationMS float64 `json:"duration_ms"`
	// WantsReply is false for a plain publish (no reply subject, no reply
	// sent) and for a command the source issued itself.
	WantsReply bool `json:"wants_reply"`
	// Request is the request body: as received when it is JSON ({} for an
	// empty body), otherwise (or when too large) the body or its first bytes
	// as a JSON string; null in a summary record. For a command the source
	// issued, the body an operator would have sent for the same effect.
	Request json.RawMessage `json:"request"`
	// Reply is the reply sent (or, without reply subject, what it would have
	// been): {"ok":true,...} or {"ok":false,"error":{...}}; see Reply.
	Reply json.RawMessage `json:"reply"`
	// RequestBytes is the size of a request too large to be recorded.
	RequestBytes int `json:"request_bytes,omitempty"`
	// Suppressed counts earlier refusals of the same command and code that
	// were not recorded one by one (a flood); for a summary record (Request
	// null) it is the whole count the record stands for.
	Suppressed int `json:"suppressed,omitempty"`
	// Origin names what made a source issue the command itself (for example
	// a deadline); empty for the commands received on a command subject.
	Origin string `json:"origin,omitempty"`
}

// Reply is the reply document of a command's outcome, exactly as the runtime
// replies to Handle's result and error: {"ok":true,...fields of result} or
// {"ok":false,"error":{"code":...,"message":...}}. A source uses it for the
// Reply of an AuditRecord it writes itself.
func Reply(result any, err error) json.RawMessage {
	b, _ := encodeReply(result, err)
	return b
}

// Audit records a command in the session's audit stream, through its high
// lane. A zero Received means now. It waits for room in the lane at most the
// command timeout: a full lane (NATS down) must not hold the caller, and with
// it shutdown, for ever.
func (h *Host) Audit(ctx context.Context, rec AuditRecord) error {
	if rec.Command == "" {
		return errors.New("audit: the record names no command")
	}
	if rec.Received.IsZero() {
		rec.Received = time.Now()
	}
	rec.Received = rec.Received.UTC()
	payload, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit %s: encode: %w", rec.Command, err)
	}
	actx, cancel := context.WithTimeout(ctx, h.rt.opts.CommandTimeout)
	defer cancel()
	return h.Emit(actx, Event{
		Subject: subjects.Audit(h.kind, h.name, rec.Command), Lane: LaneHigh,
		Payload: payload, Type: "audit",
	})
}
