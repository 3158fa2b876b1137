package lasersell

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// route holds the few top-level fields routing needs; see parseRoute.
type route struct {
	Type          string
	PositionID    string
	WalletPubkey  string
	Mint          string
	TokenAccount  string
	Slot          string
	SessionID     string
	TriggeredAtMS string
	LevelIndex    string
	OpenedAtMS    string
	// Tokens is the raw "tokens" value: only balance_update needs it (its
	// dedup id), so the hot path keeps the slice and converts nothing.
	Tokens []byte
}

// handleFrame publishes one upstream frame and applies what it means to the
// local state. It fails only when the event cannot be queued (shutdown).
func (s *Source) handleFrame(ctx context.Context, c *conn, mt int, data []byte, now time.Time) error {
	if len(data) > maxEventBytes {
		// JetStream would refuse it forever (max_payload): keep its start, for
		// diagnosis, copied so the multi-megabyte read buffer can be freed.
		return s.malformed(ctx, c, bytes.Clone(data[:oversizedKeep]), now,
			fmt.Sprintf("frame of %d bytes is larger than %d, the most one event may carry", len(data), maxEventBytes))
	}
	if mt != websocket.TextMessage {
		return s.malformed(ctx, c, data, now, "binary frame")
	}
	var r route
	if why := parseRoute(data, &r); why != "" {
		return s.malformed(ctx, c, data, now, why)
	}

	s.mu.Lock()
	upstream := c.sessionID
	if c.ready && r.Type != typeHelloOK && r.Type != "error" {
		c.answered = true // the server streams on this session: see healthyLocked
	}
	s.mu.Unlock()
	ev := connector.Event{Lane: connector.LaneHigh, Payload: data, UpstreamSession: upstream, Received: now}
	name := s.cfg.Session

	switch r.Type {
	case typePnLUpdate:
		ev.Subject, ev.Lane, ev.Type = subjects.LaserSellPnL(name, r.PositionID), connector.LaneLow, typePnLUpdate
		return s.host.Emit(ctx, ev)

	case typeExitSignal:
		ev.Subject, ev.Type = subjects.LaserSellExit(name, r.WalletPubkey), typeExitSignal
		sid := r.SessionID
		if sid == "" {
			sid = upstream
		}
		level := r.LevelIndex
		if level == "" {
			level = "-"
		}
		if r.PositionID != "" && r.TriggeredAtMS != "" {
			ev.MsgID = msgID(name, "exit", sid, r.PositionID, r.TriggeredAtMS, level)
		}
		return s.host.Emit(ctx, ev)

	case typeHelloOK:
		ev.Subject, ev.Type = subjects.LaserSellEvent(name, typeHelloOK, subjects.Placeholder), typeHelloOK
		ev.UpstreamSession = r.SessionID
		if err := s.host.Emit(ctx, ev); err != nil {
			return err
		}
		s.onHello(ctx, c, data, now)
		return nil

	case typePong:
		s.onPong(c, now)
		ev.Subject, ev.Type = subjects.LaserSellEvent(name, typePong, subjects.Placeholder), typePong
		return s.host.Emit(ctx, ev)

	case typePositionOpened:
		ev.Subject, ev.Type = subjects.LaserSellEvent(name, typePositionOpened, eventKey(&r)), typePositionOpened
		if r.PositionID != "" {
			ev.MsgID = msgID(name, "pos-open", r.PositionID)
		}
		if err := s.host.Emit(ctx, ev); err != nil {
			return err
		}
		s.positionOpened(c, &r, now)
		return nil

	case typePositionClosed:
		ev.Subject, ev.Type = subjects.LaserSellEvent(name, typePositionClosed, eventKey(&r)), typePositionClosed
		if r.PositionID != "" {
			ev.MsgID = msgID(name, "pos-close", r.PositionID)
		}
		if err := s.host.Emit(ctx, ev); err != nil {
			return err
		}
		s.positionClosed(&r)
		return nil

	case typeBalanceUpdate:
		ev.Subject, ev.Type = subjects.LaserSellEvent(name, typeBalanceUpdate, eventKey(&r)), typeBalanceUpdate
		// Two real updates of one holding can share a slot (two transactions):
		// the amount is part of the identity, so only an identical
		// re-emission is deduplicated.
		if r.WalletPubkey != "" && r.Mint != "" && r.Slot != "" {
			tokens := atom(r.Tokens)
			if tokens == "" {
				tokens = "-"
			}
			ev.MsgID = msgID(name, "balance", r.WalletPubkey, r.Mint, r.Slot, tokens)
		}
		return s.host.Emit(ctx, ev)
	}

	if r.Type == "error" {
		// The protocol does not tie errors to commands: the log is where an
		// operator sees, for example, the server refusing a configure.
		var e struct{ Code, Message string }
		_ = json.Unmarshal(data, &e)
		s.log.Warn().Str("code", e.Code).Str("message", e.Message).Msg("upstream error")
		s.mu.Lock()
		c.upErrors++ // may be a refused configure: see Source.reconcile
		s.mu.Unlock()
	}
	// error, liquidity_snapshot, trade_tick and types this connector does not
	// know yet: published, never dropped.
	typ := subjects.Token(r.Type)
	ev.Subject, ev.Type = subjects.LaserSellEvent(name, typ, eventKey(&r)), typ
	return s.host.Emit(ctx, ev)
}

// eventKey is the last subject token of an event: the position it is about,
// else the wallet, else "_".
func eventKey(r *route) string {
	switch {
	case r.PositionID != "":
		return r.PositionID
	case r.WalletPubkey != "":
		return r.WalletPubkey
	}
	return subjects.Placeholder
}

// Size limits of what one frame becomes.
const (
	// maxEventBytes is the largest frame published as an event: NATS's default
	// max_payload (1 MiB) less room for the headers. Larger frames (up to the
	// WebSocket read limit) are malformed.
	maxEventBytes = 1<<20 - 16<<10
	// oversizedKeep is how much of an oversized frame the malformed event keeps.
	oversizedKeep = 16 << 10
	// maxMsgIDLen bounds a natural Nats-Msg-Id; JetStream keeps every id of
	// the duplicate window in memory.
	maxMsgIDLen = 512
)

// msgID joins the session name and parts into a Nats-Msg-Id, or returns ""
// (the runtime then uses a synthetic id) when an upstream part could be
// confused with the separator or changed in transit (see idPart), or the id
// would be too long.
func msgID(session string, parts ...string) string {
	n := len(session)
	for _, p := range parts {
		if !idPart(p) {
			return ""
		}
		n += 1 + len(p)
	}
	if n > maxMsgIDLen {
		return ""
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(session)
	for _, p := range parts {
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// idPart reports whether an upstream value can be one part of a Nats-Msg-Id:
// non-empty valid UTF-8 without ':' (the separator: wallet "a:b" with mint "c"
// must not read as wallet "a" with mint "b:c", which would deduplicate two
// different facts), spaces (header values are trimmed) or control characters.
func idPart(p string) bool {
	if p == "" || !utf8.ValidString(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == ':' || c == 0x7f {
			return false
		}
	}
	return true
}

// safeHeader reports whether s can be a NATS header value: valid UTF-8 with
// no control characters (a CR or LF would end the header).
func safeHeader(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// malformed publishes a frame that is not a JSON object with a "type", raw,
// on <kind>.<session>.malformed.
func (s *Source) malformed(ctx context.Context, c *conn, data []byte, now time.Time, why string) error {
	s.host.Metrics().Malformed.Inc()
	preview := data
	if len(preview) > 64 {
		preview = preview[:64]
	}
	s.malformedLog.Warn().Str("reason", why).Int("bytes", len(data)).Str("preview", strconv.Quote(string(preview))).
		Msg("malformed upstream frame published to the malformed subject")
	s.mu.Lock()
	upstream := c.sessionID
	s.mu.Unlock()
	return s.host.Emit(ctx, connector.Event{
		Subject: subjects.Malformed(s.host.Kind(), s.host.Name()), Lane: connector.LaneHigh,
		Payload: data, Type: "malformed", UpstreamSession: upstream, Received: now,
	})
}
