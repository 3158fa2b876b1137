package lasersell

import (
	"bytes"
	"encoding/json"

	"github.com/jetbridge/connector/internal/jsonscan"
)

// parseRoute fills r from the top-level fields of one frame and returns why
// the frame is malformed ("" when it is a JSON object with a string "type").
//
// It is the hot path of every frame (pnl_update arrives by the hundred
// thousand per second), so it validates and routes in one pass: package
// jsonscan (strict, checked against encoding/json here by FuzzParseRoute)
// walks the frame, picking the routing fields without
// decoding anything else. Keys match after unescaping; a later duplicate key
// wins, as with encoding/json. A field of an unexpected JSON type reads as "".
func parseRoute(data []byte, r *route) string {
	const invalid = "invalid JSON"
	i := jsonscan.SkipSpace(data, 0)
	if i >= len(data) {
		return invalid
	}
	if data[i] != '{' {
		if end := jsonscan.Value(data, i, 0); end >= 0 && jsonscan.SkipSpace(data, end) == len(data) {
			return "not a JSON object"
		}
		return invalid
	}
	i = jsonscan.SkipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		i++
	} else {
		for {
			if i >= len(data) || data[i] != '"' {
				return invalid
			}
			keyEnd := jsonscan.String(data, i)
			if keyEnd < 0 {
				return invalid
			}
			key := data[i+1 : keyEnd-1]
			if bytes.IndexByte(key, '\\') >= 0 {
				// An escaped key ("t\u0079pe") is the same key to every JSON decoder.
				key = []byte(stringValue(data[i:keyEnd]))
			}
			i = jsonscan.SkipSpace(data, keyEnd)
			if i >= len(data) || data[i] != ':' {
				return invalid
			}
			i = jsonscan.SkipSpace(data, i+1)
			valEnd := jsonscan.Value(data, i, 1)
			if valEnd < 0 {
				return invalid
			}
			r.set(key, data[i:valEnd])
			i = jsonscan.SkipSpace(data, valEnd)
			if i >= len(data) {
				return invalid
			}
			if data[i] == '}' {
				i++
				break
			}
			if data[i] != ',' {
				return invalid
			}
			i = jsonscan.SkipSpace(data, i+1)
		}
	}
	if jsonscan.SkipSpace(data, i) != len(data) {
		return invalid
	}
	if r.Type == "" {
		return `no string "type"`
	}
	return ""
}

// set records one top-level field if it is a routing field.
func (r *route) set(key, val []byte) {
	switch string(key) { // the compiler does not allocate for this conversion
	case "type":
		r.Type = typeName(val)
	case "position_id":
		r.PositionID = atom(val)
	case "wallet_pubkey":
		r.WalletPubkey = stringValue(val)
	case "mint":
		r.Mint = stringValue(val)
	case "token_account":
		r.TokenAccount = stringValue(val)
	case "slot":
		r.Slot = atom(val)
	case "session_id":
		r.SessionID = atom(val)
	case "triggered_at_ms":
		r.TriggeredAtMS = atom(val)
	case "level_index":
		r.LevelIndex = atom(val)
	case "opened_at_ms":
		r.OpenedAtMS = atom(val)
	case "tokens":
		r.Tokens = val
	}
}

// typeName returns the "type" string, interned for the known types so the
// common frames allocate nothing here.
func typeName(val []byte) string {
	if len(val) < 2 || val[0] != '"' {
		return ""
	}
	switch string(val[1 : len(val)-1]) {
	case typePnLUpdate:
		return typePnLUpdate
	case typeExitSignal:
		return typeExitSignal
	case typePositionOpened:
		return typePositionOpened
	case typePositionClosed:
		return typePositionClosed
	case typeBalanceUpdate:
		return typeBalanceUpdate
	case typeHelloOK:
		return typeHelloOK
	case typePong:
		return typePong
	}
	return stringValue(val)
}

// stringValue decodes a JSON string value ("" for any other JSON type).
func stringValue(val []byte) string {
	if len(val) < 2 || val[0] != '"' {
		return ""
	}
	inner := val[1 : len(val)-1]
	for _, b := range inner {
		// Escapes and non-ASCII (possibly invalid UTF-8, which encoding/json
		// replaces with U+FFFD) take the slow, exact path.
		if b == '\\' || b >= 0x80 {
			var s string
			if json.Unmarshal(val, &s) != nil {
				return ""
			}
			return s
		}
	}
	return string(inner)
}

// atom returns a number literal as written, or a string's content when it
// can travel in a header (ids become subject tokens and Nats-Msg-Id parts);
// "" for anything else.
func atom(val []byte) string {
	if len(val) == 0 {
		return ""
	}
	if c := val[0]; c == '-' || c >= '0' && c <= '9' {
		return string(val)
	}
	if s := stringValue(val); safeHeader(s) {
		return s
	}
	return ""
}
