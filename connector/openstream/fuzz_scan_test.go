package openstream

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/jetbridge/connector/subjects"
)

// FuzzScanLine checks the one-pass line scanner against encoding/json: the
// same lines are JSON objects, the same routing fields are read (duplicate
// and escaped keys included), and the event subject built from the type is
// always one safe token. Seeds: testdata/fuzz/FuzzScanLine.
func FuzzScanLine(f *testing.F) {
	for _, seed := range []string{
		`{"type":"data","ts":1,"result":{"type":"nested"}}`,
		`{"type":"data","type":"monitor_ack"}`,
		`{"t\u0079pe":"stop_ack","target":"session"}`,
		`{"error":"session_timeout","message":"idle"}`,
		`{"type":"handshake_ack","ok":false}`,
		` {"type":"a.b *>"} `,
		"\u00a0{\"type\":\"x\"}",
		`{"type":"x"} {"type":"y"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		info, ok := scanLine(line)
		var fields map[string]json.RawMessage
		err := json.Unmarshal(line, &fields)
		if want := err == nil && fields != nil; ok != want {
			t.Fatalf("%q: object %v, encoding/json: %v", line, ok, err)
		}
		if !ok {
			return
		}
		typ, hasType := decodedString(fields, "type")
		errCode, hasErr := decodedString(fields, "error")
		target, _ := decodedString(fields, "target")
		rawOK, hasOK := fields["ok"]
		want := lineInfo{typ: typ, hasType: hasType, err: errCode, hasErr: hasErr, target: target,
			notOK: hasOK && !bytes.Equal(rawOK, []byte("true"))}
		if info != want {
			t.Fatalf("%q: scanned %+v, encoding/json reads %+v", line, info, want)
		}
		subject := subjects.OpenStreamEvent("R", info.typ)
		if tok := subject[len("openstream.R.event."):]; !subjects.ValidToken(tok) || len(tok) > subjects.MaxTokenLen {
			t.Fatalf("%q: subject %q", line, subject)
		}
	})
}

// decodedString is field k decoded as a string ("" when it is another JSON
// type) and whether k is present.
func decodedString(fields map[string]json.RawMessage, k string) (string, bool) {
	raw, ok := fields[k]
	var s string
	_ = json.Unmarshal(raw, &s)
	return s, ok
}
