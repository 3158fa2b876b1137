package openstream

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/openstream/ndjson"
	"github.com/jetbridge/connector/subjects"
)

// hostileController is a scripted Open Stream server: it acknowledges
// HANDSHAKE and MONITOR, answers STOP, and hands each streaming connection
// to the test, which writes whatever lines it wants. Everything it starts
// stops at test cleanup.
type hostileController struct {
	ln        net.Listener
	streaming chan *hostileConn
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     []net.Conn
	accepted  int
}

// hostileConn serializes writes of the controller and the test.
type hostileConn struct {
	mu sync.Mutex
	c  net.Conn
}

func (h *hostileConn) write(t *testing.T, b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := h.c.Write(b); err != nil {
		t.Errorf("controller write: %v", err)
	}
}

func startHostileController(t *testing.T) *hostileController {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileController{ln: ln, streaming: make(chan *hostileConn, 16)}
	h.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.accepted++
			h.mu.Unlock()
			h.wg.Go(func() { h.serve(t, &hostileConn{c: c}) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			_ = c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

func (h *hostileController) serve(t *testing.T, hc *hostileConn) {
	defer hc.c.Close()
	r := bufio.NewReader(hc.c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var cmd struct {
			Cmd     string `json:"cmd"`
			Payload struct {
				Target string `json:"target"`
			} `json:"payload"`
		}
		_ = json.Unmarshal(line, &cmd)
		switch cmd.Cmd {
		case cmdHandshake:
			hc.write(t, []byte(`{"type":"handshake_ack","ok":true,"version":"1.0.0"}`+"\n"))
		case cmdMonitor:
			hc.write(t, []byte(`{"type":"monitor_ack"}`+"\n"))
			h.streaming <- hc
		case cmdStop:
			if cmd.Payload.Target == targetSession {
				hc.write(t, []byte(`{"type":"stop_ack","target":"session"}`+"\n"))
				return
			}
			hc.write(t, []byte(`{"error":"nothing_to_stop","message":"nothing active"}`+"\n"))
		}
	}
}

func (h *hostileController) connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.accepted
}

// hostileLine is one line a hostile controller sends and where it must land.
type hostileLine struct {
	name    string
	line    []byte // without the terminating "\n"
	subject string // expected subject, in OPENSTREAM_EVENTS
	payload []byte // expected payload; nil: the line itself
	typ     string // expected Connector-Type
}

func hostileLines() []hostileLine {
	const malformedSubject = "openstream.cell1.malformed"
	malformed := func(name string, line []byte) hostileLine {
		return hostileLine{name: name, line: line, subject: malformedSubject, typ: "malformed"}
	}
	event := func(name, line, typ string) hostileLine {
		return hostileLine{name: name, line: []byte(line), subject: "openstream.cell1.event." + typ, typ: typ}
	}
	long := bytes.Repeat([]byte("L"), ndjson.DefaultMaxLine+10)
	longType := strings.Repeat("T", 300)
	return []hostileLine{
		malformed("not JSON", []byte("this is not json")),
		malformed("invalid UTF-8 bytes", []byte("\xff\xfe\x00\xc3")),
		malformed("array", []byte(`[1,2,3]`)),
		malformed("string", []byte(`"s"`)),
		malformed("number", []byte(`42`)),
		malformed("null", []byte(`null`)),
		malformed("truncated", []byte(`{"type":"data","ts":`)),
		malformed("two objects", []byte(`{"type":"data"} {"type":"data"}`)),
		malformed("non-JSON whitespace around", []byte("\u00a0{\"type\":\"x\"}")),
		malformed("nesting over 10000", []byte(`{"type":"deep","a":`+strings.Repeat("[", 10001)+strings.Repeat("]", 10001)+`}`)),
		{name: "line over the limit", line: long, payload: long[:64], subject: malformedSubject, typ: "malformed"},

		event("nesting of 9999", `{"type":"deep","a":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}`, "deep"),
		event("unknown type", `{"type":"future_event","x":1}`, "future_event"),
		event("wildcards in type", `{"type":"a.b *>"}`, "a_b___"),
		event("subject of a type", `{"type":"openstream.cell1.data.>"}`, "openstream_cell1_data__"),
		event("control characters in type", `{"type":"t\tab\u0000\r\n"}`, "t_ab___"),
		event("non-ASCII type", `{"type":"ünïcödé"}`, "ünïcödé"),
		event("invalid UTF-8 in type", "{\"type\":\"x\xff\"}", "x_"),
		event("long type", `{"type":"`+longType+`"}`, subjects.Token(longType)),
		event("empty type", `{"type":""}`, evUnknown),
		event("numeric type", `{"type":17}`, evUnknown),
		event("no type", `{"no_type":true}`, evUnknown),
		event("duplicate type: the last wins", `{"type":"data","type":"dup_last"}`, "dup_last"),
		event("escaped key", `{"t\u0079pe":"escaped_key"}`, "escaped_key"),
		event("error with a hostile code", `{"error":"x.y *>","message":"m"}`, evError),
	}
}

// A hostile controller's lines each end on the malformed subject or on a safe
// event subject, counted, in order; the data lines and events around them
// (one of each before every hostile line) are all stored, in order; the
// connection survives (an oversized line resynchronizes at the next newline)
// and valid lines afterwards are published normally.
func TestHostileLinesEndMalformedOrSafe(t *testing.T) {
	h := startHostileController(t)
	cfg := testConfig()
	cfg.Keepalive, cfg.IdleKeepalive = 0, 0 // the script alone talks
	cfg.StallMin = time.Hour
	rc := RobotConfig{Name: robotName, Addr: h.ln.Addr().String(), Monitors: map[string]Recipe{"m": {URL: "/x", Method: "GET", PeriodMS: 5}}}
	f := start(t, nil, rc, cfg, connectortest.Options{})
	var hc *hostileConn
	select {
	case hc = <-h.streaming:
	case <-time.After(waitLong):
		t.Fatal("the connector did not MONITOR")
	}

	cases := hostileLines()
	var script bytes.Buffer
	var want []hostileLine
	malformed := 0
	for i, c := range cases {
		fmt.Fprintf(&script, `{"type":"data","ts":%d,"result":{}}`+"\n", i)
		marker := fmt.Sprintf(`{"type":"marker","n":%d}`, i)
		script.WriteString(marker + "\n")
		want = append(want, hostileLine{name: "marker before " + c.name, line: []byte(marker), subject: "openstream.cell1.event.marker", typ: "marker"})
		script.Write(c.line)
		script.WriteByte('\n')
		if c.payload == nil {
			c.payload = c.line
		}
		if c.subject == "openstream.cell1.malformed" {
			malformed++
		}
		want = append(want, c)
	}
	fmt.Fprintf(&script, `{"type":"data","ts":%d,"result":{}}`+"\n", len(cases))
	script.WriteString(`{"type":"after"}` + "\n")
	want = append(want, hostileLine{name: "after", line: []byte(`{"type":"after"}`), subject: "openstream.cell1.event.after", typ: "after"})
	hc.write(t, script.Bytes())

	var got []jetstreamMsgView
	connectortest.Eventually(t, waitLong, "every expected event", func() bool {
		got = hostileEvents(f)
		return len(got) >= len(want)
	})
	if len(got) != len(want) {
		t.Errorf("%d events, want %d", len(got), len(want))
	}
	for i, w := range want {
		if i >= len(got) {
			break
		}
		payload := w.payload
		if payload == nil {
			payload = w.line
		}
		if got[i].subject != w.subject || !bytes.Equal(got[i].payload, payload) || got[i].typ != w.typ {
			t.Errorf("#%d (%s): stored on %q type %q (%d bytes), want %q type %q (%d bytes)",
				i, w.name, got[i].subject, got[i].typ, len(got[i].payload), w.subject, w.typ, len(payload))
		}
	}
	// Every data line, in order: none lost around the hostile ones.
	data := f.env.Fetch(subjects.StreamOpenStreamData, f.subject("data", "m"), len(cases)+1, waitLong)
	if len(data) != len(cases)+1 {
		t.Fatalf("%d data lines stored, want %d", len(data), len(cases)+1)
	}
	for i, m := range data {
		if want := fmt.Sprintf(`{"type":"data","ts":%d,"result":{}}`, i); string(m.Data()) != want {
			t.Fatalf("data #%d: %q, want %q", i, m.Data(), want)
		}
	}
	if got := f.env.Metric("connector_malformed_total"); got != float64(malformed) {
		t.Errorf("connector_malformed_total = %v, want %d", got, malformed)
	}
	if n := h.connections(); n != 1 {
		t.Errorf("%d connections: hostile lines must not end the session", n)
	}
}

// jetstreamMsgView is one stored event, reduced to what the test compares.
type jetstreamMsgView struct {
	subject, typ string
	payload      []byte
}

// hostileEvents returns the robot's events in stream order, without the
// connector's status and the acks of the connection set-up.
func hostileEvents(f *fixture) []jetstreamMsgView {
	filter := f.subject(">")
	msgs := f.env.Fetch(subjects.StreamOpenStreamEvent, filter, int(f.env.Count(subjects.StreamOpenStreamEvent, filter)), time.Second)
	var out []jetstreamMsgView
	for _, m := range msgs {
		switch m.Subject() {
		case f.subject("status"), f.subject("event", evHandshakeAck), f.subject("event", evMonitorAck):
			continue
		}
		out = append(out, jetstreamMsgView{subject: m.Subject(), typ: m.Headers().Get(subjects.HeaderType), payload: m.Data()})
	}
	return out
}
