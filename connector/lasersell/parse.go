package lasersell

import "encoding/json"

// parseRoute fills r from the top-level fields of one frame and returns why
// the frame is malformed ("" when it is a JSON object with a string "type").
//
// It is the hot path of every frame (pnl_update arrives by the hundred
// thousand per second): the standard library validates the frame, then a
// walker over the now-known-valid bytes picks the routing fields without
// decoding anything else. Keys match exactly; a later duplicate key wins,
// as with encoding/json. A field of an unexpected JSON type reads as "".
func parseRoute(data []byte, r *route) string {
	if !json.Valid(data) {
		return "invalid JSON"
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return "not a JSON object"
	}
	i = skipSpace(data, i+1)
	for data[i] != '}' {
		keyEnd := skipString(data, i)
		key := data[i+1 : keyEnd-1]
		i = skipSpace(data, keyEnd)
		i = skipSpace(data, i+1) // past ':'
		valEnd := skipValue(data, i)
		val := data[i:valEnd]
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
		i = skipSpace(data, valEnd)
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	if r.Type == "" {
		return `no string "type"`
	}
	return ""
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

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string starting at data[i] ('"').
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the index just past the value starting at data[i]. The
// input is valid JSON, so only strings and nesting need attention.
func skipValue(data []byte, i int) int {
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(data) {
		switch data[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}
