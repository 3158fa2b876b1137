package ndjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrNewline is returned if an encoded message would contain a raw newline. encoding/json never
// produces one (it escapes control characters inside strings and emits no whitespace), so this is
// a last line of defence against a second command being injected into the stream.
var ErrNewline = errors.New("ndjson: encoded message contains a raw newline")

// Encode returns v as one compact JSON line terminated by a single "\n".
//
// encoding/json escapes "\n" and "\r" inside strings and adds no whitespace; json.RawMessage
// values (at top level or nested) are re-compacted, so an indented raw payload is flattened and
// an invalid one is an error. HTML characters (<, >, &) are not escaped, like Python's json.dumps.
func Encode(v any) ([]byte, error) { return AppendEncode(nil, v) }

// AppendEncode appends v as one compact JSON line plus "\n" to dst. On error dst is returned
// unchanged.
func AppendEncode(dst []byte, v any) ([]byte, error) {
	n := len(dst)
	dst, err := appendJSON(dst, v)
	if err != nil {
		return dst[:n], err
	}
	return terminate(dst, n)
}

// AppendCommand appends the Open Stream command line {"cmd":<cmd>,"payload":<payload>} plus
// "\n" to dst. A nil payload (or an empty json.RawMessage) is sent as {} because every command
// carries a payload object. A json.RawMessage payload is re-compacted and validated, never
// passed through.
func AppendCommand(dst []byte, cmd string, payload any) ([]byte, error) {
	n := len(dst)
	dst = append(dst, `{"cmd":`...)
	dst, err := appendJSON(dst, cmd)
	if err != nil {
		return dst[:n], err
	}
	dst = append(dst, `,"payload":`...)
	switch p := payload.(type) {
	case nil:
		dst = append(dst, "{}"...)
	case json.RawMessage:
		if len(bytes.TrimSpace(p)) == 0 {
			dst = append(dst, "{}"...)
		} else {
			dst, err = appendJSON(dst, p)
		}
	default:
		dst, err = appendJSON(dst, p)
	}
	if err != nil {
		return dst[:n], fmt.Errorf("ndjson: payload of %s: %w", cmd, err)
	}
	dst = append(dst, '}')
	return terminate(dst, n)
}

// appendJSON appends the compact encoding of v (no trailing newline).
func appendJSON(dst []byte, v any) ([]byte, error) {
	switch raw := v.(type) {
	case json.RawMessage:
		return appendCompact(dst, raw)
	case *json.RawMessage:
		if raw == nil {
			return append(dst, "null"...), nil
		}
		return appendCompact(dst, *raw)
	}
	n := len(dst)
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return dst[:n], err
	}
	out := buf.Bytes()
	return out[:len(out)-1], nil // Encoder.Encode terminates the value with "\n"
}

// appendCompact appends src without insignificant whitespace; json.Compact also validates it.
func appendCompact(dst, src []byte) ([]byte, error) {
	n := len(dst)
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, src); err != nil {
		return dst[:n], err
	}
	return buf.Bytes(), nil
}

// terminate checks the message written after dst[:n] and appends the "\n".
func terminate(dst []byte, n int) ([]byte, error) {
	if bytes.IndexByte(dst[n:], '\n') >= 0 || bytes.IndexByte(dst[n:], '\r') >= 0 {
		return dst[:n], ErrNewline
	}
	return append(dst, '\n'), nil
}
