package ndjson

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzAppendCommand: whatever the command name and raw payload, the output is
// either an error (dst unchanged) or exactly one NDJSON line that the Reader
// reads back whole and that decodes to the same command and payload: no
// request content can end the line early and inject a second command.
// Seeds: testdata/fuzz/FuzzAppendCommand.
func FuzzAppendCommand(f *testing.F) {
	f.Add("CONTROL", []byte(`{"url":"/a","method":"POST","body":{"x":"1\n{\"cmd\":\"STOP\"}"}}`))
	f.Add("MONITOR\n", []byte("{\n \"url\" : \"/x\"\r\n}"))
	f.Add("STOP", []byte(`{"target":"session"}`+"\n"+`{"cmd":"CONTROL"}`))
	f.Fuzz(func(t *testing.T, cmd string, payload []byte) {
		prefix := []byte("kept")
		out, err := AppendCommand(prefix, cmd, json.RawMessage(payload))
		if err != nil {
			if string(out) != "kept" {
				t.Fatalf("error %v, but dst changed to %q", err, out)
			}
			return
		}
		line := out[len(prefix):]
		if bytes.IndexByte(line, '\n') != len(line)-1 || bytes.IndexByte(line, '\r') >= 0 {
			t.Fatalf("not one line: %q", line)
		}
		r := NewReader(bytes.NewReader(line), len(line))
		got, err := r.Next()
		if err != nil || !bytes.Equal(got, line[:len(line)-1]) {
			t.Fatalf("reader: %q, %v", got, err)
		}
		var decoded struct {
			Cmd     string          `json:"cmd"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(got, &decoded); err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		var wantCmd string
		quoted, _ := json.Marshal(cmd)
		_ = json.Unmarshal(quoted, &wantCmd)
		if decoded.Cmd != wantCmd {
			t.Fatalf("cmd %q, want %q", decoded.Cmd, wantCmd)
		}
		var want bytes.Buffer
		if len(bytes.TrimSpace(payload)) == 0 {
			want.WriteString("{}")
		} else if err := json.Compact(&want, payload); err != nil {
			t.Fatalf("invalid payload %q accepted", payload)
		}
		if !bytes.Equal(decoded.Payload, want.Bytes()) {
			t.Fatalf("payload %q, want %q", decoded.Payload, want.Bytes())
		}
	})
}
