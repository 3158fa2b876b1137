package sim

import (
	"strconv"
	"unicode/utf8"
)

// Append-style encoders: the data path writes up to 500 lines/s per connection, so lines are
// built into a reused buffer instead of going through encoding/json.

// appendNum formats like the controller: fixed 6 decimals with trailing zeros trimmed, at least
// one decimal ("90.0", "98.923641", "-0.0").
func appendNum(dst []byte, v float64) []byte {
	n := len(dst)
	dst = strconv.AppendFloat(dst, v, 'f', 6, 64)
	i := len(dst)
	for i > n+2 && dst[i-1] == '0' && dst[i-2] != '.' {
		i--
	}
	return dst[:i]
}

func appendNums(dst []byte, v []float64) []byte {
	dst = append(dst, '[')
	for i, x := range v {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendNum(dst, x)
	}
	return append(dst, ']')
}

// appendString appends s as a JSON string. Control characters are escaped and invalid UTF-8 is
// replaced, so the result never contains a raw newline.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// appendError appends the error line {"error":code,"message":msg,"hint":hint}; hint is
// omitted when empty (the vendor says not every error carries one).
func appendError(dst []byte, code, msg, hint string) []byte {
	dst = append(dst, `{"error":`...)
	dst = appendString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = appendString(dst, msg)
	if hint != "" {
		dst = append(dst, `,"hint":`...)
		dst = appendString(dst, hint)
	}
	return append(dst, "}\n"...)
}

// Error codes (PROTOCOLS.md section 2).
const (
	ErrInvalidNDJSON        = "invalid_ndjson"
	ErrRxBufOverflow        = "rx_buf_overflow"
	ErrHandshakeRequired    = "handshake_required"
	ErrVersionMismatch      = "version_mismatch"
	ErrBusySessionActive    = "busy_session_active"
	ErrSessionTimeout       = "session_timeout"
	ErrInvalidCmd           = "invalid_cmd"
	ErrInvalidPayload       = "invalid_payload"
	ErrMissingField         = "missing_field"
	ErrInvalidType          = "invalid_type"
	ErrInvalidValue         = "invalid_value"
	ErrMissingMajor         = "missing_major"
	ErrInvalidMajorType     = "invalid_major_type"
	ErrInvalidVersion       = "invalid_version"
	ErrHandshakeRejected    = "handshake_rejected"
	ErrMissingURL           = "missing_url"
	ErrInvalidURL           = "invalid_url"
	ErrURLTooLong           = "url_too_long"
	ErrMissingMethod        = "missing_method"
	ErrInvalidMethod        = "invalid_method"
	ErrMissingPeriodMS      = "missing_period_ms"
	ErrInvalidPeriod        = "invalid_period"
	ErrInvalidArgs          = "invalid_args"
	ErrInvalidBody          = "invalid_body"
	ErrMissingTarget        = "missing_target"
	ErrInvalidTarget        = "invalid_target"
	ErrMonitorAlreadyActive = "monitor_already_active"
	ErrMonitorInternalError = "monitor_internal_error"
	ErrMethodNotAllowed     = "method_not_allowed"
	ErrControlBusy          = "control_busy"
	ErrNothingToStop        = "nothing_to_stop"
	ErrStopFailed           = "stop_failed"
)

// hint is the optional third field of error lines, per code ("" for none).
func hint(code string) string {
	switch code {
	case ErrInvalidNDJSON:
		return "send exactly one compact JSON object per line, terminated by \\n"
	case ErrRxBufOverflow:
		return "reduce the message size or the send rate"
	case ErrHandshakeRequired:
		return "send HANDSHAKE right after connecting"
	case ErrVersionMismatch:
		return "use the server's MAJOR version"
	case ErrBusySessionActive:
		return "STOP the active MONITOR/CONTROL, then retry"
	case ErrSessionTimeout:
		return "keep sending commands or reconnect"
	case ErrInvalidCmd:
		return "cmd must be one of HANDSHAKE, MONITOR, CONTROL, STOP"
	case ErrInvalidPayload:
		return "payload must be a JSON object"
	case ErrHandshakeRejected:
		return "close existing sessions and retry"
	case ErrInvalidURL:
		return "url must start with / and contain no spaces"
	case ErrInvalidPeriod:
		return "period_ms must be an integer (2..30000)"
	case ErrInvalidArgs:
		return "args must be a JSON object"
	case ErrInvalidBody:
		return "body must be a JSON object or array"
	case ErrInvalidTarget:
		return "target must be session, control or monitor"
	case ErrMonitorAlreadyActive:
		return "STOP the monitor first"
	case ErrMethodNotAllowed:
		return "use POST, PUT or DELETE"
	case ErrControlBusy:
		return "retry later"
	case ErrStopFailed:
		return "reconnect"
	}
	return ""
}
