// Package subjects is the one place that names the connector's external contract:
// NATS subjects, JetStream streams, KV buckets and message headers.
//
// Every subject the connector publishes to or listens on is built here, and every
// token that comes from upstream data or configuration passes through Token first,
// so no upstream string can add subject levels or wildcards.
package subjects

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
	"unicode/utf8"
)

// KV buckets every kind shares (a kind declares its own in its Kind).
const (
	// BucketDesired holds the desired upstream state per session, re-applied
	// after every reconnect and restart; keys start with <kind>.<session>.
	BucketDesired = "CONNECTOR_DESIRED"
	// BucketStatus holds each session's last status, for operators.
	BucketStatus = "CONNECTOR_STATUS"
	// BucketLeases holds one lease per upstream session of a fleet of
	// replicas: key <kind>.<session>, value {"replica":...,"epoch":...}.
	BucketLeases = "CONNECTOR_LEASES"
	// BucketReplicas holds the fleet's live replicas: key <replica>, renewed
	// by each replica's heartbeat, expiring with the lease TTL.
	BucketReplicas = "CONNECTOR_REPLICAS"
)

// StreamAudit records every command received, for every kind.
const StreamAudit = "CONNECTOR_AUDIT"

// Headers the connector sets on every message it publishes.
const (
	HeaderMsgID           = "Nats-Msg-Id"
	HeaderSource          = "Connector-Source"
	HeaderSession         = "Connector-Session"
	HeaderType            = "Connector-Type"
	HeaderReceived        = "Connector-Received"
	HeaderUpstreamSession = "Connector-Upstream-Session"
	HeaderSeq             = "Connector-Seq"
	// HeaderEpoch is the lease epoch under which the owner received the
	// event, on high-lane messages of a session a fleet runs: it increases
	// with every new owner, so a message stored after one of a higher epoch
	// was held back by a former owner cut off from NATS.
	HeaderEpoch = "Connector-Epoch"
)

// Headers `connector replay` adds to every re-published copy, naming the original.
const (
	HeaderReplayStream = "Connector-Replay-Stream"
	HeaderReplaySeq    = "Connector-Replay-Seq"
	// HeaderReplayTime is the original publish time, RFC 3339 with nanoseconds.
	HeaderReplayTime = "Connector-Replay-Time"
)

// Placeholder is the key token used where an event has no natural key.
const Placeholder = "_"

// MaxTokenLen is the longest token Token returns, in bytes. Subjects travel
// in one protocol control line (4096 bytes by default on the server), so an
// upstream string must not be able to inflate them.
const MaxTokenLen = 128

// hashLen is how many hex digits of SHA-256 a shortened token ends with.
const hashLen = 16

// Token turns an arbitrary string into one safe subject token. Characters that
// NATS treats specially ('.', '*', '>'), whitespace, control characters and
// invalid UTF-8 are replaced by '_'; an empty string becomes Placeholder. A
// result longer than MaxTokenLen bytes is cut at a character boundary and
// ends with '-' and 16 hex digits of the SHA-256 of the whole input, so two
// long strings that differ only at their ends still get different subjects.
// Token is idempotent: a token it returns is returned unchanged.
func Token(s string) string {
	if s == "" {
		return Placeholder
	}
	if len(s) <= MaxTokenLen && ValidToken(s) {
		return s
	}
	var b strings.Builder
	b.Grow(min(len(s), MaxTokenLen+utf8.UTFMax))
	cut := -1 // where the kept prefix ends if the token is too long
	for _, r := range s {
		if unsafeRune(r) {
			r = '_'
		}
		if cut < 0 && b.Len()+utf8.RuneLen(r) > MaxTokenLen-1-hashLen {
			cut = b.Len()
		}
		if b.Len()+utf8.RuneLen(r) > MaxTokenLen {
			sum := sha256.Sum256([]byte(s))
			return b.String()[:cut] + "-" + hex.EncodeToString(sum[:hashLen/2])
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ValidToken reports whether s can be used as one subject token as it is.
// Configuration names (session, robot, monitor) must pass it; upstream strings go
// through Token instead.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if unsafeRune(r) {
			return false
		}
	}
	return true
}

func unsafeRune(r rune) bool {
	switch r {
	case '.', '*', '>', ' ', '\t', '\r', '\n', '\v', '\f', 0x85, 0xA0, 0xFFFD:
		return true
	}
	return r < 0x20 || r == 0x7f
}

func join(tokens ...string) string { return strings.Join(tokens, ".") }

// Any is the single-token wildcard. The builders pass their kind and session
// arguments through unchanged, so Status(kind, Any) is the pattern of every
// session's status subject: patterns are derived from the builders, never
// written a second time.
const Any = "*"

// Status is the subject of a session's connector-lifecycle events.
func Status(kind, name string) string { return join(kind, name, "status") }

// Malformed is the subject for upstream frames that are not valid JSON objects.
func Malformed(kind, name string) string { return join(kind, name, "malformed") }

// Command is the request subject of one command of a session.
func Command(kind, name, command string) string { return join(kind, name, "cmd", command) }

// Audit is the subject recording a command forwarded (or refused) for a session.
func Audit(kind, name, command string) string { return audit(kind, name, Token(command)) }

func audit(kind, name, commandToken string) string {
	return join(kind, name, "audit", commandToken)
}

// AuditPattern captures the audit records of every session of kind.
func AuditPattern(kind string) string { return audit(kind, Any, Any) }

// SessionKey names a session: "<kind>.<name>". It is the session's key in
// BucketStatus, the prefix of its keys in the other buckets, and the first two
// tokens of every subject it owns.
func SessionKey(kind, name string) string { return join(kind, name) }

// StatusKey is the key of a session in BucketStatus (its SessionKey).
func StatusKey(kind, name string) string { return SessionKey(kind, name) }

// Lane says which publishing lane a stream's messages travel in.
type Lane int

const (
	// LaneHigh is never dropped; a full queue pushes back on the upstream reader.
	LaneHigh Lane = iota
	// LaneLow is high-rate telemetry; a full queue drops its oldest message.
	LaneLow
)

func (l Lane) String() string {
	if l == LaneLow {
		return "low"
	}
	return "high"
}

// StreamSpec describes one stream the connector owns. Retention limits come from
// configuration; Lane says which defaults apply.
type StreamSpec struct {
	Name        string
	Description string
	Subjects    []string
	Lane        Lane
	// Duplicates is the Nats-Msg-Id deduplication window this stream needs
	// by default (0: the connector's default); configuration may change it.
	Duplicates time.Duration
	// Shared marks a stream that captures the subjects of several kinds
	// (the audit stream): processes built with other kinds, or started
	// with other CONNECTOR_SOURCES, provision it too, so provisioning adds
	// its subjects to those the server has and never removes any.
	Shared bool
}

// BucketSpec describes one KV bucket the connector owns.
type BucketSpec struct {
	Name        string
	Description string
	History     uint8
}
