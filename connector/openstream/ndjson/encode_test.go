package ndjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

func oneLine(t *testing.T, b []byte) {
	t.Helper()
	if len(b) == 0 || b[len(b)-1] != '\n' || bytes.Count(b, []byte("\n")) != 1 || bytes.IndexByte(b, '\r') >= 0 {
		t.Fatalf("not exactly one line: %q", b)
	}
	if !json.Valid(b[:len(b)-1]) {
		t.Fatalf("invalid JSON: %q", b)
	}
}

func TestEncode(t *testing.T) {
	type payload struct {
		URL  string          `json:"url"`
		Args json.RawMessage `json:"args,omitempty"`
	}
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"newline in string is escaped", map[string]string{"m": "a\nb\r\u2028"}, `{"m":"a\nb\r\u2028"}`},
		{"html not escaped", map[string]string{"u": "/a?b=<1>&c"}, `{"u":"/a?b=<1>&c"}`},
		{"raw message recompacted", json.RawMessage("{\n  \"a\": [1,\n 2]\n}\n"), `{"a":[1,2]}`},
		{"nested raw recompacted", payload{URL: "/x", Args: json.RawMessage("{\n\"jno_n\" : 6\n}")},
			`{"url":"/x","args":{"jno_n":6}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Encode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			oneLine(t, b)
			if string(b) != tc.want+"\n" {
				t.Fatalf("got %q want %q", b, tc.want)
			}
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	prefix := []byte("keep")
	for _, in := range []any{
		json.RawMessage("{\"a\":\"x\ny\"}"), // raw newline inside a string is invalid JSON
		json.RawMessage("{"),
		make(chan int),
	} {
		out, err := AppendEncode(prefix, in)
		if err == nil {
			t.Fatalf("%v: want error, got %q", in, out)
		}
		if string(out) != "keep" {
			t.Fatalf("dst modified on error: %q", out)
		}
	}
}

func TestAppendCommand(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		payload any
		want    string
	}{
		{"nil payload", "STOP", nil, `{"cmd":"STOP","payload":{}}`},
		{"map", "HANDSHAKE", map[string]int{"major": 1}, `{"cmd":"HANDSHAKE","payload":{"major":1}}`},
		{"raw indented", "CONTROL", json.RawMessage("{\n \"method\": \"POST\",\n \"body\": {}\n}"),
			`{"cmd":"CONTROL","payload":{"method":"POST","body":{}}}`},
		{"cmd escaped", "A\nB", nil, `{"cmd":"A\nB","payload":{}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendCommand([]byte("x"), tc.cmd, tc.payload)
			if err != nil {
				t.Fatal(err)
			}
			oneLine(t, b[1:])
			if string(b) != "x"+tc.want+"\n" {
				t.Fatalf("got %q", b)
			}
		})
	}
	if b, err := AppendCommand(nil, "CONTROL", json.RawMessage("{\"a\":\"\n\"}")); err == nil {
		t.Fatalf("injected newline accepted: %q", b)
	}
}

func TestTerminateRejectsNewline(t *testing.T) {
	if _, err := terminate([]byte("{\"a\":\n1}"), 0); !errors.Is(err, ErrNewline) {
		t.Fatal(err)
	}
}

// TestEncodeRoundTrip: whatever Encode produces, Reader returns as exactly one line.
func FuzzEncodeRoundTrip(f *testing.F) {
	f.Add("a\nb", "\r\n")
	f.Fuzz(func(t *testing.T, k, v string) {
		b, err := Encode(map[string]string{k: v})
		if err != nil { // strings always marshal, and marshalled JSON has no raw newline
			t.Fatalf("encode %q: %v", k, err)
		}
		oneLine(t, b)
		r := NewReader(bytes.NewReader(b), len(b))
		line, err := r.Next()
		if err != nil || !bytes.Equal(line, b[:len(b)-1]) {
			t.Fatalf("round trip: %q %v", line, err)
		}
	})
}
