package openstream

import (
	"encoding/json"
	"fmt"

	"github.com/jetbridge/connector/connector/openstream/ndjson"
)

// Open Stream commands (client -> server).
const (
	cmdHandshake = "HANDSHAKE"
	cmdMonitor   = "MONITOR"
	cmdControl   = "CONTROL"
	cmdStop      = "STOP"
)

// STOP targets.
const (
	targetSession = "session"
	targetControl = "control"
	targetMonitor = "monitor"
)

// Server event types.
const (
	evData         = "data"
	evHandshakeAck = "handshake_ack"
	evMonitorAck   = "monitor_ack"
	evStopAck      = "stop_ack"
	evControlErr   = "control_err"
	evError        = "error"   // subject token for lines without type that carry "error"
	evUnknown      = "unknown" // subject token for objects with neither a string type nor an error
)

type handshakePayload struct {
	Major int `json:"major"`
}

type monitorPayload struct {
	URL      string          `json:"url"`
	Method   string          `json:"method"`
	PeriodMS int             `json:"period_ms"`
	Args     json.RawMessage `json:"args,omitempty"`
}

type controlPayload struct {
	URL    string          `json:"url"`
	Method string          `json:"method"`
	Args   json.RawMessage `json:"args,omitempty"`
	Body   json.RawMessage `json:"body,omitempty"`
}

type stopPayload struct {
	Target string `json:"target"`
}

// serverError is a line without type: {"error":..,"message":..,"hint":..}.
type serverError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
}

// encodeCmd renders one command as a single compact NDJSON line. Everything
// that came from a request was decoded first, so a newline in it is either
// JSON whitespace (removed) or escaped inside a string: it can never end the
// line early and inject a second command.
func encodeCmd(cmd string, payload any) ([]byte, error) {
	b, err := ndjson.AppendCommand(make([]byte, 0, 128), cmd, payload)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", cmd, err)
	}
	return b, nil
}

func monitorLine(r Recipe) ([]byte, error) {
	return encodeCmd(cmdMonitor, monitorPayload(r))
}
