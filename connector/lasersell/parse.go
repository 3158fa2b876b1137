package lasersell

import "encoding/json"

// parseRoute fills r from the top-level fields of one frame and returns why
// the frame is malformed ("" when it is a JSON object with a string "type").
//
// It is the hot path of every frame (pnl_update arrives by the hundred
// thousand per second), so it validates and routes in one pass: a strict JSON
// scanner (the grammar encoding/json accepts, checked against it by
// FuzzParseRoute) walks the frame, picking the routing fields without
// decoding anything else. Keys match exactly; a later duplicate key wins, as
// with encoding/json. A field of an unexpected JSON type reads as "".
func parseRoute(data []byte, r *route) string {
	const invalid = "invalid JSON"
	i := skipSpace(data, 0)
	if i >= len(data) {
		return invalid
	}
	if data[i] != '{' {
		if end := scanValue(data, i, 0); end >= 0 && skipSpace(data, end) == len(data) {
			return "not a JSON object"
		}
		return invalid
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		i++
	} else {
		for {
			if i >= len(data) || data[i] != '"' {
				return invalid
			}
			keyEnd := scanString(data, i)
			if keyEnd < 0 {
				return invalid
			}
			key := data[i+1 : keyEnd-1]
			i = skipSpace(data, keyEnd)
			if i >= len(data) || data[i] != ':' {
				return invalid
			}
			i = skipSpace(data, i+1)
			valEnd := scanValue(data, i, 1)
			if valEnd < 0 {
				return invalid
			}
			r.set(key, data[i:valEnd])
			i = skipSpace(data, valEnd)
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
			i = skipSpace(data, i+1)
		}
	}
	if skipSpace(data, i) != len(data) {
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

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// scanString returns the index just past the string starting at data[i] ('"'),
// or -1 when it is not a valid JSON string (unterminated, a control character,
// a bad escape). Invalid UTF-8 is accepted, as encoding/json does.
func scanString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1
		case c == '\\':
			i++
			if i >= len(data) {
				return -1
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return -1
				}
				for _, h := range data[i+1 : i+5] {
					if !isHex(h) {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		case c < 0x20:
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanValue returns the index just past the JSON value starting at data[i],
// or -1 when it is not valid JSON.
func scanValue(data []byte, i, depth int) int {
	if i >= len(data) {
		return -1
	}
	switch c := data[i]; {
	case c == '"':
		return scanString(data, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return -1
		}
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closing {
			return i + 1
		}
		for {
			if c == '{' {
				if i >= len(data) || data[i] != '"' {
					return -1
				}
				if i = scanString(data, i); i < 0 {
					return -1
				}
				i = skipSpace(data, i)
				if i >= len(data) || data[i] != ':' {
					return -1
				}
				i = skipSpace(data, i+1)
			}
			if i = scanValue(data, i, depth+1); i < 0 {
				return -1
			}
			i = skipSpace(data, i)
			if i >= len(data) {
				return -1
			}
			if data[i] == closing {
				return i + 1
			}
			if data[i] != ',' {
				return -1
			}
			i = skipSpace(data, i+1)
		}
	case c == 't':
		return scanLiteral(data, i, "true")
	case c == 'f':
		return scanLiteral(data, i, "false")
	case c == 'n':
		return scanLiteral(data, i, "null")
	case c == '-' || isDigit(c):
		return scanNumber(data, i)
	}
	return -1
}

func scanLiteral(data []byte, i int, lit string) int {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// scanNumber follows the JSON number grammar: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
func scanNumber(data []byte, i int) int {
	if data[i] == '-' {
		i++
	}
	switch {
	case i >= len(data):
		return -1
	case data[i] == '0':
		i++
	case isDigit(data[i]):
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	default:
		return -1
	}
	if i < len(data) && data[i] == '.' {
		i++
		start := i
		for i < len(data) && isDigit(data[i]) {
			i++
		}
		if i == start {
			return -1
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		start := i
		for i < len(data) && isDigit(data[i]) {
			i++
		}
		if i == start {
			return -1
		}
	}
	return i
}
