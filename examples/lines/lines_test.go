package lines_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/examples/lines"
	"github.com/jetbridge/connector/subjects"
)

const wait = 10 * time.Second

// upstream is a loopback TCP server standing in for the lines upstream: the
// test writes lines to the connector's connection and reads what send wrote.
type upstream struct {
	ln    net.Listener
	conns chan *peer  // every connection the connector opened
	got   chan string // every line the connector wrote
}

// peer is one connection the connector opened.
type peer struct {
	net.Conn
	closed chan struct{} // closed when the connector closed it
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln, conns: make(chan *peer, 8), got: make(chan string, 64)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p := &peer{Conn: c, closed: make(chan struct{})}
			u.conns <- p
			go func() {
				defer close(p.closed)
				for sc := bufio.NewScanner(c); sc.Scan(); {
					u.got <- sc.Text()
				}
			}()
		}
	}()
	return u
}

// accept returns the next connection the connector opened.
func (u *upstream) accept(t *testing.T) *peer {
	t.Helper()
	select {
	case p := <-u.conns:
		t.Cleanup(func() { _ = p.Close() })
		return p
	case <-time.After(wait):
		t.Fatal("the connector did not connect")
		return nil
	}
}

// received returns the next line the connector wrote upstream.
func (u *upstream) received(t *testing.T) string {
	t.Helper()
	select {
	case l := <-u.got:
		return l
	case <-time.After(wait):
		t.Fatal("nothing reached the upstream")
		return ""
	}
}

// configure walks the registration path of cmd/connector/sources.go (which
// this test cannot import): each kind's Config, read by envconfig with the
// kind's prefix, says whether it is configured and declares the sessions.
func configure(t *testing.T, kinds []connector.Kind, env map[string]string) ([]subjects.Kind, []connector.Session) {
	t.Helper()
	var sk []subjects.Kind
	var sessions []connector.Session
	for _, k := range kinds {
		// The defaults alone (what `connector env` shows) declare nothing.
		cfg := k.Config()
		if err := connector.Defaults(cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Configured() {
			t.Fatalf("%s is configured by its defaults alone", k.Name())
		}
		if _, err := cfg.Sessions(); err == nil || !strings.Contains(err.Error(), "LINES_ADDRS") {
			t.Fatalf("sessions without an address: %v (want an error naming LINES_ADDRS)", err)
		}
		for name, v := range env {
			t.Setenv(name, v)
		}
		cfg = k.Config()
		if err := envconfig.Process(cfg.EnvPrefix(), cfg); err != nil { // main's loadEnv
			t.Fatal(err)
		}
		if !cfg.Configured() {
			t.Fatalf("%s is not configured by %v", k.Name(), env)
		}
		s, err := cfg.Sessions()
		if err != nil {
			t.Fatal(err)
		}
		sk = append(sk, k.Subjects)
		sessions = append(sessions, s...)
	}
	return sk, sessions
}

func TestLinesEndToEnd(t *testing.T) {
	upA, upB := newUpstream(t), newUpstream(t)
	kinds := []connector.Kind{lines.Kind()}
	sk, sessions := configure(t, kinds, map[string]string{
		"LINES_ADDRS":   fmt.Sprintf("a=%s, b=%s", upA.ln.Addr(), upB.ln.Addr()),
		"LINES_BACKOFF": "20ms",
	})
	if len(sessions) != 2 || sessions[0].Key() != "lines.a" || sessions[1].Key() != "lines.b" {
		t.Fatalf("sessions %v", sessions)
	}
	if sk[0].Name != subjects.KindLines || sk[0].Streams[0].Name != subjects.StreamLinesEvents {
		t.Fatalf("subjects %+v", sk)
	}
	env := connectortest.Start(t, connectortest.Options{Kinds: sk})
	// LINES_EVENTS captures the kind's lines, status and malformed subjects,
	// and no command subject (JetStream would answer a command with an ack).
	for subject, captured := range map[string]bool{
		subjects.LinesEvent("s", "t"):                     true,
		subjects.Status(subjects.KindLines, "s"):          true,
		subjects.Malformed(subjects.KindLines, "s"):       true,
		subjects.Command(subjects.KindLines, "s", "send"): false,
	} {
		if _, err := env.JS.StreamNameBySubject(context.Background(), subject); (err == nil) != captured {
			t.Errorf("%s captured: %v, want %v", subject, err == nil, captured)
		}
	}
	env.Run(sessions...)
	connA, connB := upA.accept(t), upB.accept(t)
	statusKV, err := env.JS.KeyValue(context.Background(), subjects.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	state := func(key string) string {
		e, err := statusKV.Get(context.Background(), key)
		if err != nil {
			return ""
		}
		var st struct{ State string }
		_ = json.Unmarshal(e.Value(), &st)
		return st.State
	}
	connectortest.Eventually(t, wait, "lines.a connected in CONNECTOR_STATUS", func() bool { return state("lines.a") == connector.StateConnected })

	t.Run("lines land verbatim with the connector headers", func(t *testing.T) {
		sent := []struct{ line, subject, typ string }{
			{`{"type":"greeting","text":"hi"}`, "lines.a.line.greeting", "greeting"},
			{` { "n" : 2 } `, "lines.a.line._", "_"},               // no type: the placeholder token
			{`{"type":"a.b *>"}`, "lines.a.line.a_b___", "a_b___"}, // upstream text never adds levels
		}
		for _, s := range sent {
			fmt.Fprintf(connA, "%s\n", s.line)
		}
		// A literal pattern: LinesEvent passes its type through Token, which
		// turns the wildcard into "_" (subjects/lines.go derives its patterns
		// from the unexported builder for that reason).
		got := env.Fetch(subjects.StreamLinesEvents, "lines.a.line.*", len(sent), wait)
		if len(got) != len(sent) {
			t.Fatalf("%d of %d lines stored", len(got), len(sent))
		}
		for i, m := range got {
			h := m.Headers()
			if m.Subject() != sent[i].subject || string(m.Data()) != sent[i].line {
				t.Errorf("stored %s %q, want %s %q", m.Subject(), m.Data(), sent[i].subject, sent[i].line)
			}
			if h.Get(subjects.HeaderSource) != "lines" || h.Get(subjects.HeaderSession) != "a" || h.Get(subjects.HeaderType) != sent[i].typ ||
				h.Get(subjects.HeaderSeq) == "" || h.Get(subjects.HeaderMsgID) == "" {
				t.Errorf("headers %v", h)
			}
			if _, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderReceived)); err != nil {
				t.Errorf("%s: %v", subjects.HeaderReceived, err)
			}
		}
	})

	t.Run("a line that is not a JSON object lands on the malformed subject", func(t *testing.T) {
		for _, l := range []string{"not json", `["an","array"]`, "null"} {
			fmt.Fprintf(connA, "%s\n", l)
		}
		got := env.Fetch(subjects.StreamLinesEvents, subjects.Malformed(subjects.KindLines, "a"), 3, wait)
		if len(got) != 3 || string(got[0].Data()) != "not json" || string(got[2].Data()) != "null" {
			t.Fatalf("malformed: %d stored", len(got))
		}
		if tp := got[0].Headers().Get(subjects.HeaderType); tp != "malformed" {
			t.Errorf("type %q", tp)
		}
		if n := env.MetricWhere("connector_malformed_total", map[string]string{"session": "a"}); n != 3 {
			t.Errorf("connector_malformed_total = %v", n)
		}
	})

	t.Run("send reaches the upstream; bad bodies are refused before it", func(t *testing.T) {
		subject := subjects.Command(subjects.KindLines, "a", "send")
		if r := env.Request(subject, `{"line":"hello upstream"}`, wait); !r.OK || r.Raw["bytes"] != float64(15) {
			t.Fatalf("send: %+v", r)
		}
		if l := upA.received(t); l != "hello upstream" {
			t.Fatalf("upstream got %q", l)
		}
		for body, code := range map[string]string{
			`{"line":`:                  connector.CodeInvalidJSON,
			`{"line":"x","extra":1}`:    connector.CodeInvalidJSON,
			`{"line":"x","LINE":"y"}`:   connector.CodeInvalidJSON,
			`{"line":"two\nlines"}`:     "invalid_line",
			`{}`:                        "invalid_line",
			strings.Repeat("x", 70<<10): connector.CodeRequestTooLarge, // the runtime's admission
		} {
			if r := env.Request(subject, body, wait); r.OK || r.Error == nil || r.Error.Code != code {
				t.Errorf("send %.30q: %+v, want %s", body, r, code)
			}
		}
		// Nothing refused was written: the next line upstream is the next good one.
		if r := env.Request(subject, `{"line":"after"}`, wait); !r.OK {
			t.Fatalf("send: %+v", r)
		}
		if l := upA.received(t); l != "after" {
			t.Fatalf("upstream got %q after refusals", l)
		}
		// Every command is audited, refusals included.
		connectortest.Eventually(t, wait, "audit records", func() bool {
			return env.Count(subjects.StreamAudit, subjects.Audit(subjects.KindLines, "a", "send")) == 8
		})
		if n := env.AuditedRefusals("lines.a.audit.>")[connector.CodeInvalidJSON]; n != 3 {
			t.Errorf("audited invalid_json refusals: %d", n)
		}
	})

	t.Run("status: connecting, connected, reconnecting after the upstream hangs up", func(t *testing.T) {
		_ = connA.Close()
		connA = upA.accept(t)
		var states []string
		for _, m := range env.Fetch(subjects.StreamLinesEvents, subjects.Status(subjects.KindLines, "a"), 5, wait) {
			var st connector.Status
			if err := json.Unmarshal(m.Data(), &st); err != nil {
				t.Fatal(err)
			}
			states = append(states, st.State)
		}
		want := []string{connector.StateConnecting, connector.StateConnected, connector.StateReconnecting, connector.StateConnecting, connector.StateConnected}
		if !slices.Equal(states, want) {
			t.Fatalf("status events %v, want %v", states, want)
		}
		connectortest.Eventually(t, wait, "lines.a connected again in KV", func() bool { return state("lines.a") == connector.StateConnected })
		if n := env.MetricWhere("connector_upstream_reconnects_total", map[string]string{"session": "a", "reason": connector.ReasonClosedByPeer}); n != 1 {
			t.Errorf("reconnects closed_by_peer = %v", n)
		}
	})

	t.Run("stopping one session leaves the other publishing", func(t *testing.T) {
		if err := env.Runtime.Stop("lines.a"); err != nil {
			t.Fatal(err)
		}
		if got := env.Runtime.Running(); !slices.Equal(got, []string{"lines.b"}) {
			t.Fatalf("running %v", got)
		}
		connectortest.Eventually(t, wait, "lines.a stopped in CONNECTOR_STATUS", func() bool { return state("lines.a") == connector.StateStopped })
		// Its upstream connection is closed; its commands are no longer served.
		select {
		case <-connA.closed:
		case <-time.After(wait):
			t.Error("lines.a's connection is still open")
		}
		r := env.Request(subjects.Command(subjects.KindLines, "a", "send"), `{"line":"x"}`, wait)
		if r.OK || r.Error == nil || r.Error.Code != connector.CodeUnknownSession {
			t.Errorf("send to a stopped session: %+v", r)
		}
		// lines.b goes on.
		fmt.Fprintln(connB, `{"type":"still","here":true}`)
		got := env.Fetch(subjects.StreamLinesEvents, subjects.LinesEvent("b", "still"), 1, wait)
		if len(got) != 1 || string(got[0].Data()) != `{"type":"still","here":true}` {
			t.Fatalf("lines.b: %d stored", len(got))
		}
		if r := env.Request(subjects.Command(subjects.KindLines, "b", "send"), `{"line":"to b"}`, wait); !r.OK {
			t.Fatalf("send to b: %+v", r)
		}
		if l := upB.received(t); l != "to b" {
			t.Fatalf("upstream b got %q", l)
		}
		if state("lines.b") != connector.StateConnected {
			t.Errorf("lines.b is %q", state("lines.b"))
		}
	})
}
