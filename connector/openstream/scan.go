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

// dataPrefix is how the controller (and the simulator) start every data line,
// so the hot path skips the key scan.
const dataPrefix = `{"type":"data"`

// scanLine reports whether line is one JSON object and, if so, its routing keys.
func scanLine(line []byte) (lineInfo, bool) {
	line = bytes.TrimSpace(line)
	if len(line) < 2 || line[0] != '{' || !jsonscan.Valid(line) {
		return lineInfo{}, false
	}
	if len(line) > len(dataPrefix) && string(line[:len(dataPrefix)]) == dataPrefix &&
		(line[len(dataPrefix)] == ',' || line[len(dataPrefix)] == '}') {
		return lineInfo{typ: "data", hasType: true}, true
	}
	var info lineInfo
	i := jsonscan.SkipSpace(line, 1)
	if line[i] == '}' {
		return info, true
	}
	// The line is valid JSON, so the scan below can trust its structure.
	for i < len(line) {
		i = jsonscan.SkipSpace(line, i)
		kEnd := jsonscan.String(line, i)
		key := line[i+1 : kEnd-1]
		i = jsonscan.SkipSpace(line, kEnd)
		i = jsonscan.SkipSpace(line, i+1) // ':'
		vEnd := jsonscan.Value(line, i, 1)
		val := line[i:vEnd]
		switch string(key) {
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
		i = jsonscan.SkipSpace(line, vEnd)
		if i >= len(line) || line[i] == '}' {
			break
		}
		i++ // ','
	}
	return info, true
}

// stringValue decodes a JSON string value; escapes are rare, so the common
// case does not allocate a decoder.
func stringValue(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}
