package openstream

import "testing"

func TestScanLine(t *testing.T) {
	cases := []struct {
		line   string
		ok     bool
		want   lineInfo
		reason string
	}{
		{`{"type":"data","ts":1,"result":{"type":"nested"}}`, true, lineInfo{typ: "data", hasType: true}, "fast path"},
		{` {"ts":1, "type" : "data"}`, true, lineInfo{typ: "data", hasType: true}, "type not first"},
		{`{"result":{"type":"x","error":"y"},"type":"monitor_ack"}`, true, lineInfo{typ: "monitor_ack", hasType: true}, "nested keys ignored"},
		{`{"error":"session_timeout","message":"idle"}`, true, lineInfo{err: "session_timeout", hasErr: true}, "error"},
		{`{"type":"stop_ack","target":"session"}`, true, lineInfo{typ: "stop_ack", hasType: true, target: "session"}, "stop_ack"},
		{`{"type":"handshake_ack","ok":true,"version":"1.0.0"}`, true, lineInfo{typ: "handshake_ack", hasType: true}, "handshake"},
		{`{"type":"handshake_ack","ok":false}`, true, lineInfo{typ: "handshake_ack", hasType: true, notOK: true}, "refused handshake"},
		{`{"type":"a\"b\\u002e","x":[1,{"y":"]}"}]}`, true, lineInfo{typ: `a"b\u002e`, hasType: true}, "escapes"},
		{`{"type":5}`, true, lineInfo{hasType: true}, "non-string type"},
		{`{}`, true, lineInfo{}, "empty"},
		{`{"type":"data"`, false, lineInfo{}, "truncated"},
		{`[1,2]`, false, lineInfo{}, "array"},
		{`"str"`, false, lineInfo{}, "string"},
		{`garbage`, false, lineInfo{}, "garbage"},
		{``, false, lineInfo{}, "empty line"},
		{`{"type":"data"} {"type":"data"}`, false, lineInfo{}, "two objects"},
	}
	for _, c := range cases {
		got, ok := scanLine([]byte(c.line))
		if ok != c.ok || got != c.want {
			t.Errorf("%s: scanLine(%q) = %+v, %v; want %+v, %v", c.reason, c.line, got, ok, c.want, c.ok)
		}
	}
}

func BenchmarkScanData(b *testing.B) {
	line := []byte(`{"type":"data","ts":1732240000000,"svc_dur_ms":0.12,"result":{"_type":"JObject","position":[1.1,2.2,3.3,4.4,5.5,6.6],"effort":[0,0,0,0,0,0],"velocity":[0,0,0,0,0,0]}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := scanLine(line); !ok {
			b.Fatal("not ok")
		}
	}
}
