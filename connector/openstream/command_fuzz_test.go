package openstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/jetbridge/connector/connector"
)

// checkLine asserts the properties of a line written to the controller: one
// line of valid UTF-8 JSON, a single object, terminated by its only newline.
func checkLine(t *testing.T, line []byte) map[string]json.RawMessage {
	t.Helper()
	if len(line) == 0 || line[len(line)-1] != '\n' || bytes.IndexByte(line, '\n') != len(line)-1 || bytes.IndexByte(line, '\r') >= 0 {
		t.Fatalf("not exactly one line: %q", line)
	}
	body := line[:len(line)-1]
	if !json.Valid(body) || !utf8.Valid(body) {
		t.Fatalf("not valid UTF-8 JSON: %q", line)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		t.Fatalf("not one object: %q", line)
	}
	return obj
}

// FuzzOpenStreamCommand runs the control, monitor and stop validators and
// their re-encoding without network. Properties: no panic; a refusal is a
// *connector.CommandError; an accepted command is one valid JSON line; an
// accepted CONTROL url passes the URL rules and is on the allow-list.
func FuzzOpenStreamCommand(f *testing.F) {
	for _, seed := range []struct {
		kind uint8
		body string
	}{
		{0, `{"url":"/project/robot/trajectory/joint_traject_insert_point","method":"POST","body":{"interval":0.005,"point":[0,90,0,0,-90,0]}}`},
		{0, `{"url":"/project/robot/motor_on","method":"PUT","args":{"a":"b\n"},"body":[]}`},
		{0, `{"url":"/project/robot/trajectory/..;","method":"POST"}`},
		{0, `{"url":"/project/robot/trajectory/%2e%2e","method":"DELETE"}`},
		{0, "{\"url\":\"/project/robot/motor_on\",\"method\":\"POST\"}\n{}"},
		{1, `{"name":"joints","url":"/project/robot/joints/joint_states","period_ms":2,"args":{"jno_start":1}}`},
		{1, `{"url":"/project/robot/po_cur","period_ms":1e400}`},
		{2, `{"target":"monitor","name":"joints"}`},
		{2, `{"target":"session"}`},
	} {
		f.Add(seed.kind, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		var line []byte
		var err error
		switch kind % 3 {
		case 0:
			line, err = controlLine(hostileAllow, "cell1", body)
			if err == nil {
				obj := checkLine(t, line)
				var p controlPayload
				if json.Unmarshal(obj["payload"], &p) != nil || string(obj["cmd"]) != `"CONTROL"` {
					t.Fatalf("not a CONTROL: %q", line)
				}
				if checkControlURL(p.URL) != nil || !allowedURL(hostileAllow, p.URL) {
					t.Fatalf("accepted url %q is not allowed", p.URL)
				}
				if p.Method != "POST" && p.Method != "PUT" && p.Method != "DELETE" {
					t.Fatalf("accepted method %q", p.Method)
				}
			}
		case 1:
			var rec Recipe
			_, rec, _, err = planMonitor(body)
			if err == nil {
				if line, err = monitorLine(rec); err != nil {
					t.Fatalf("accepted monitor does not encode: %v", err)
				}
				checkLine(t, line)
				if checkURL(rec.URL) != nil || rec.PeriodMS < MinPeriodMS || rec.PeriodMS > MaxPeriodMS {
					t.Fatalf("accepted recipe %+v", rec)
				}
			}
		default:
			var req stopRequest
			req, err = planStop(body)
			if err == nil {
				if line, err = encodeCmd(cmdStop, stopPayload{Target: req.Target}); err != nil {
					t.Fatalf("accepted stop does not encode: %v", err)
				}
				checkLine(t, line)
			}
		}
		var ce *connector.CommandError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("refusal without a code: %v", err)
		}
	})
}
