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
	"unicode/utf8"
)

// Source kinds: the first token of every subject a source owns.
const (
	KindLaserSell  = "lasersell"
	KindOpenStream = "openstream"
)

// Stream names.
const (
	StreamLaserSellExit   = "LASERSELL_EXIT"
	StreamLaserSellPnL    = "LASERSELL_PNL"
	StreamLaserSellEvents = "LASERSELL_EVENTS"
	StreamOpenStreamData  = "OPENSTREAM_DATA"
	StreamOpenStreamEvent = "OPENSTREAM_EVENTS"
	StreamAudit           = "CONNECTOR_AUDIT"
)

// KV buckets.
const (
	// BucketDesired holds the desired upstream state per session (LaserSell configure,
	// Open Stream monitors), re-applied after every reconnect and restart.
	BucketDesired = "CONNECTOR_DESIRED"
	// BucketStatus holds each session's last status, for operators.
	BucketStatus = "CONNECTOR_STATUS"
	// BucketPositions holds LaserSell open positions, one key per position.
	BucketPositions = "LASERSELL_POSITIONS"
)

// Headers the connector sets on every message it publishes.
const (
	HeaderMsgID           = "Nats-Msg-Id"
	HeaderSource          = "Connector-Source"
	HeaderSession         = "Connector-Session"
	HeaderType            = "Connector-Type"
	HeaderReceived        = "Connector-Received"
	HeaderUpstreamSession = "Connector-Upstream-Session"
	HeaderSeq             = "Connector-Seq"
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

// Status is the subject of a session's connector-lifecycle events.
func Status(kind, name string) string { return join(kind, name, "status") }

// Malformed is the subject for upstream frames that are not valid JSON objects.
func Malformed(kind, name string) string { return join(kind, name, "malformed") }

// Command is the request subject of one command of a session.
func Command(kind, name, command string) string { return join(kind, name, "cmd", command) }

// Audit is the subject recording a command forwarded (or refused) for a session.
func Audit(kind, name, command string) string {
	return join(kind, name, "audit", Token(command))
}

// StatusKey is the key of a session in BucketStatus and BucketDesired.
func StatusKey(kind, name string) string { return join(kind, name) }

// LaserSell subjects.

// LaserSellExit is where exit_signal_with_tx for a wallet goes.
func LaserSellExit(session, wallet string) string {
	return join(KindLaserSell, session, "exit", Token(wallet))
}

// LaserSellPnL is where pnl_update for a position goes.
func LaserSellPnL(session, positionID string) string {
	return join(KindLaserSell, session, "pnl", Token(positionID))
}

// LaserSellEvent is where every other server message goes, one token per type.
func LaserSellEvent(session, msgType, key string) string {
	return join(KindLaserSell, session, "event", Token(msgType), Token(key))
}

// Open Stream subjects.

// OpenStreamData is where MONITOR data of monitor M of robot R goes.
func OpenStreamData(robot, monitor string) string {
	return join(KindOpenStream, robot, "data", Token(monitor))
}

// OpenStreamEvent is where acks, errors and other non-data events of a robot go.
func OpenStreamEvent(robot, eventType string) string {
	return join(KindOpenStream, robot, "event", Token(eventType))
}

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
}

// Streams lists every stream for the given source kinds (all kinds when none are
// given). No stream captures a cmd subject: JetStream would answer the request
// itself with a publish ack.
func Streams(kinds ...string) []StreamSpec {
	all := []StreamSpec{
		{
			Name:        StreamLaserSellExit,
			Description: "LaserSell exit_signal_with_tx, per session and wallet",
			Subjects:    []string{"lasersell.*.exit.*"},
			Lane:        LaneHigh,
		},
		{
			Name:        StreamLaserSellPnL,
			Description: "LaserSell pnl_update, per session and position",
			Subjects:    []string{"lasersell.*.pnl.*"},
			Lane:        LaneLow,
		},
		{
			Name:        StreamLaserSellEvents,
			Description: "LaserSell server messages other than exits and PnL, connector status, malformed frames",
			Subjects:    []string{"lasersell.*.event.>", "lasersell.*.status", "lasersell.*.malformed"},
			Lane:        LaneHigh,
		},
		{
			Name:        StreamOpenStreamData,
			Description: "Open Stream MONITOR data, per robot and monitor",
			Subjects:    []string{"openstream.*.data.*"},
			Lane:        LaneLow,
		},
		{
			Name:        StreamOpenStreamEvent,
			Description: "Open Stream acks, errors and unknown events, connector status, malformed lines",
			Subjects:    []string{"openstream.*.event.*", "openstream.*.status", "openstream.*.malformed"},
			Lane:        LaneHigh,
		},
		{
			Name:        StreamAudit,
			Description: "Every command received for an upstream: what, when, outcome",
			Subjects:    []string{"lasersell.*.audit.*", "openstream.*.audit.*"},
			Lane:        LaneHigh,
		},
	}
	if len(kinds) == 0 {
		return all
	}
	var out []StreamSpec
	for _, s := range all {
		if s.Name == StreamAudit {
			out = append(out, s)
			continue
		}
		for _, k := range kinds {
			if strings.HasPrefix(s.Subjects[0], k+".") {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// Buckets lists the KV buckets the connector owns.
func Buckets() []BucketSpec {
	return []BucketSpec{
		{Name: BucketDesired, Description: "desired upstream state per session, re-applied after reconnects and restarts", History: 5},
		{Name: BucketStatus, Description: "last status of every upstream session", History: 1},
		{Name: BucketPositions, Description: "LaserSell open positions", History: 1},
	}
}

// BucketSpec describes one KV bucket the connector owns.
type BucketSpec struct {
	Name        string
	Description string
	History     uint8
}
