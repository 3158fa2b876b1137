package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

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
	// Requester is who sent the command, when the NATS server said so (see
	// Requester); absent otherwise.
	Requester *Requester `json:"requester,omitempty"`
}

// RequestInfoHeader is the header in which nats-server (2.2+) describes the
// client that sent a request into an account through a service import. It
// is set (and any copy the client sent replaced) by the server only on that
// path: with share: true on the import it names the user, otherwise just the
// account; a request from inside the connector's own account carries
// whatever its sender wrote, so only the import path makes it evidence.
const RequestInfoHeader = "Nats-Request-Info"

// Requester is the part of Nats-Request-Info an audit record keeps: the
// server's fields that say who asked (never the JWT, nonce or timing).
type Requester struct {
	// Account is the requester's account (its name, or public key in
	// operator mode).
	Account string `json:"account"`
	// User is the authenticated user: the name for user/password, the
	// public key for NKey and JWT users, "[REDACTED]" for a token.
	User string `json:"user,omitempty"`
	// Name is the client's connection name (chosen by the client).
	Name string `json:"name,omitempty"`
	// Host is the client's IP address, as the server saw it.
	Host string `json:"host,omitempty"`
}

// requesterMaxField bounds each recorded field: Name is the client's choice.
const requesterMaxField = 256

// RequesterOf reads the requester from a request's headers; nil when the
// server added none (a request from within the account) or it is not the
// server's JSON.
func RequesterOf(h nats.Header) *Requester {
	raw := h.Get(RequestInfoHeader)
	if raw == "" {
		return nil
	}
	var info struct {
		Account string `json:"acc"`
		User    string `json:"user"`
		Name    string `json:"name"`
		Host    string `json:"host"`
	}
	if err := json.Unmarshal([]byte(raw), &info); err != nil || info.Account == "" {
		return nil
	}
	clip := func(s string) string { // json.Unmarshal already made it valid UTF-8
		if len(s) > requesterMaxField {
			s = strings.ToValidUTF8(s[:requesterMaxField], "")
		}
		return s
	}
	return &Requester{Account: clip(info.Account), User: clip(info.User), Name: clip(info.Name), Host: clip(info.Host)}
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
