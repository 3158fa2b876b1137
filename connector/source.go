// Package connector is the protocol-agnostic core: the Source contract, the two
// publishing lanes, the JetStream publisher, command routing, KV state and metrics.
// It knows no upstream protocol; a source knows no stream, only subjects and lanes.
package connector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/jetbridge/connector/subjects"
)

// Lane re-exports subjects.Lane so sources need only this package to emit.
type Lane = subjects.Lane

// The two lanes.
const (
	LaneHigh = subjects.LaneHigh
	LaneLow  = subjects.LaneLow
)

// Source is one running upstream session: it keeps the session alive,
// emits every upstream event through the Host it was opened on, and executes
// commands. It reconnects by itself; Run returns when ctx ends (nil) or on an
// error that retrying cannot fix. Its identity (kind and name) is its Host's.
type Source interface {
	// Commands lists the command names served on <kind>.<name>.cmd.<command>.
	Commands() []string
	Run(ctx context.Context) error
	// Handle executes one command. It returns a JSON object (struct or map) merged
	// into the {"ok":true} reply, or an error: a *CommandError is refused with its
	// code, anything else is reported as an internal error. The runtime calls it
	// only between the start and the end of Run's session, but it may be called
	// before Run has loaded its state: a source waits for that itself.
	Handle(ctx context.Context, cmd Command) (any, error)
}

// Command is one request received on a command subject.
type Command struct {
	Name string
	Body []byte
	// WantsReply is false for a plain publish without reply subject (for example
	// CONTROL trajectory streaming): the source may skip waiting for confirmation.
	WantsReply bool
}

// Event is one upstream message on its way to JetStream.
type Event struct {
	Subject string
	Lane    Lane
	// Payload is the upstream frame's bytes exactly as received. The runtime owns
	// it after Emit: the source must not reuse the slice.
	Payload []byte
	// MsgID is the natural identity of the event, sent as Nats-Msg-Id so that
	// JetStream drops the duplicates a reconnect re-emits. Empty when it has none.
	MsgID string
	// Type is the upstream message type (Connector-Type header).
	Type string
	// UpstreamSession is the upstream's own session id, if it has one.
	UpstreamSession string
	// Received is when the frame was read; zero means now.
	Received time.Time
}

// Status is a session's connector-lifecycle state, published on
// <kind>.<name>.status and kept in the status KV bucket. The published
// document is this struct's JSON with the session's source, name and time
// (see statusRecord).
type Status struct {
	State           string `json:"state"`
	Reason          string `json:"reason,omitempty"`
	Attempt         int    `json:"attempt,omitempty"`
	BackoffMS       int64  `json:"backoff_ms,omitempty"`
	UpstreamSession string `json:"upstream_session,omitempty"`
	// Detail carries source-specific facts (limits, gap, monitor name...).
	Detail any `json:"detail,omitempty"`
	// Limits are the limits the upstream advertised for the session, if any,
	// shown in the session's snapshot (/status). The core does not publish
	// them: a source whose protocol has them puts them in Detail as well.
	Limits any `json:"-"`
}

// Status states shared by all sources.
const (
	StateConnecting   = "connecting"
	StateConnected    = "connected"
	StateDisconnected = "disconnected"
	StateReconnecting = "reconnecting"
	StateStopped      = "stopped"
)

// CommandError refuses a command with a stable machine-readable code.
type CommandError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *CommandError) Error() string { return e.Code + ": " + e.Message }

// Refuse builds a *CommandError.
func Refuse(code, format string, args ...any) *CommandError {
	return &CommandError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Codes shared by every source.
const (
	CodeInvalidJSON    = "invalid_json"
	CodeUnknownCommand = "unknown_command"
	CodeInternal       = "internal_error"
	CodeTimeout        = "timeout"
	CodeShuttingDown   = "shutting_down"
	// CodeRequestTooLarge: the request body exceeds Options.CommandMaxBytes.
	CodeRequestTooLarge = "request_too_large"
	// CodeRateLimited: the session's command rate limit (Options.CommandRate,
	// CommandBurst) is exhausted; nothing was forwarded.
	CodeRateLimited = "rate_limited"
	// CodeUnknownSession: no session of that name is served by this connector.
	CodeUnknownSession = "unknown_session"
	// CodeNotOwner: this replica cannot confirm that it still owns the
	// session (its lease); nothing was forwarded. The session is moving to
	// another replica: retry after a few seconds.
	CodeNotOwner = "not_owner"
)

// DecodeStrict unmarshals a command body into v, refusing with CodeInvalidJSON
// anything but one JSON object in valid UTF-8, unknown fields, wrong types,
// trailing data and duplicate keys (also keys equal but for case, which the
// decoder would match to the same field): what is forwarded is re-encoded
// from v, and it must be what an auditor reading the request sees. An empty
// body counts as {}.
func DecodeStrict(body []byte, v any) error {
	trimmed := bytes.TrimLeftFunc(body, unicode.IsSpace)
	lead := len(body) - len(trimmed)
	body = bytes.TrimRightFunc(trimmed, unicode.IsSpace)
	if len(body) == 0 {
		body = []byte("{}")
	}
	// Refusals name fields by their JSON path and types in JSON words (see
	// decode_errors.go), never the Go types the body is decoded into.
	if refusal := syntaxRefusal(body, lead); refusal != nil {
		return refusal
	}
	if refusal := duplicateKeyRefusal(body); refusal != nil {
		return refusal
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeRefusal(body, v, err)
	}
	return nil
}

// foldKey maps every rune to the smallest rune of its case-folding orbit, so
// keys the decoder matches case-insensitively (including 'K' and the Kelvin
// sign, 's' and the long s) map to one string.
func foldKey(s string) string {
	return strings.Map(func(r rune) rune {
		lowest := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			lowest = min(lowest, f)
		}
		return lowest
	}, s)
}
