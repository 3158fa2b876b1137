package openstream

import (
	"bytes"
	"encoding/json"

	"github.com/jetbridge/connector/internal/jsonscan"
)

// lineInfo is what routing needs from one server line, found without decoding
// the whole object (a data line at 500 Hz carries a REST body we never look at).
type lineInfo struct {
	typ     string // value of top-level "type" when it is a string
	hasType bool   // "type" present (string or not)
	err     string // value of top-level "error" when it is a string
	hasErr  bool
	target  string // top-level "target" (stop_ack)
	notOK   bool   // top-level "ok" is present and not true (a refused handshake_ack)
}

// scanLine reports whether line is one JSON object and, if so, its routing
// keys. It validates and routes in one pass (package jsonscan, strict like
// encoding/json, which FuzzScanLine checks it against): the top-level keys are
// read, nested values only validated. Keys compare after unescaping and a
// later duplicate key wins, as with encoding/json; only JSON whitespace may
// surround the object, since the line is published as it is.
func scanLine(line []byte) (lineInfo, bool) {
	var info lineInfo
	i := jsonscan.SkipSpace(line, 0)
	if i >= len(line) || line[i] != '{' {
		return lineInfo{}, false
	}
	i = jsonscan.SkipSpace(line, i+1)
	if i < len(line) && line[i] == '}' {
		i++
	} else {
		for {
			if i >= len(line) || line[i] != '"' {
				return lineInfo{}, false
			}
			kEnd := jsonscan.String(line, i)
			if kEnd < 0 {
				return lineInfo{}, false
			}
			key := line[i:kEnd]
			i = jsonscan.SkipSpace(line, kEnd)
			if i >= len(line) || line[i] != ':' {
				return lineInfo{}, false
			}
			i = jsonscan.SkipSpace(line, i+1)
			vEnd := jsonscan.Value(line, i, 1)
			if vEnd < 0 {
				return lineInfo{}, false
			}
			info.set(key, line[i:vEnd])
			i = jsonscan.SkipSpace(line, vEnd)
			if i >= len(line) {
				return lineInfo{}, false
			}
			if line[i] == '}' {
				i++
				break
			}
			if line[i] != ',' {
				return lineInfo{}, false
			}
			i = jsonscan.SkipSpace(line, i+1)
		}
	}
	if jsonscan.SkipSpace(line, i) != len(line) {
		return lineInfo{}, false
	}
	return info, true
}

// set records one top-level field if routing needs it; key is the quoted key.
func (info *lineInfo) set(quotedKey, val []byte) {
	key := quotedKey[1 : len(quotedKey)-1]
	if bytes.IndexByte(key, '\\') >= 0 {
		// An escaped key ("t\u0079pe") is the same key to every JSON decoder.
		s, _ := stringValue(quotedKey)
		key = []byte(s)
	}
	switch string(key) { // the compiler does not allocate for this conversion
	case "type":
		info.hasType = true
		info.typ, _ = stringValue(val)
	case "error":
		info.hasErr = true
		info.err, _ = stringValue(val)
	case "target":
		info.target, _ = stringValue(val)
	case "ok":
		info.notOK = string(val) != "true"
	}
}

// stringValue decodes a JSON string value exactly as encoding/json does.
// Escapes and non-ASCII bytes (possibly invalid UTF-8, which encoding/json
// replaces with U+FFFD) are rare, so only they take the decoder.
func stringValue(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	if !needsDecoding(inner) {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}

func needsDecoding(inner []byte) bool {
	for _, b := range inner {
		if b == '\\' || b >= 0x80 {
			return true
		}
	}
	return false
}
