package connector_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

func (s *echoSource) handledCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.handled)
}

// A body over CommandMaxBytes is refused before the source sees it, with
// request_too_large (micro code 413), counted, and audited by size only.
func TestCommandRequestTooLarge(t *testing.T) {
	t.Parallel()
	env := connectortest.Start(t, connectortest.Options{CommandMaxBytes: 1024})
	src := newEcho(t, env, "big", connector.LaneSizes{})
	env.Run()
	subj := subjects.Command(subjects.KindLaserSell, "big", "echo")

	fits := `{"word":"` + strings.Repeat("a", 1024-len(`{"word":""}`)) + `"}`
	if r := env.Request(subj, fits, 2*time.Second); !r.OK {
		t.Fatalf("a body of exactly the limit was refused: %+v", r.Raw)
	}
	msg, err := env.Conn.Request(subj, []byte(fits[:len(fits)-2]+`a"}`), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(micro.ErrorCodeHeader) != "413" || !strings.Contains(string(msg.Data), `"code":"request_too_large"`) {
		t.Fatalf("oversized request: headers %v, reply %s", msg.Header, msg.Data)
	}
	if n := src.handledCount(); n != 1 {
		t.Fatalf("the source handled %d commands, want only the one within the limit", n)
	}
	if got := env.MetricWhere("connector_commands_total", map[string]string{"session": "big", "outcome": connector.CodeRequestTooLarge}); got != 1 {
		t.Fatalf("request_too_large counted %v times", got)
	}
	env.WaitCount(subjects.StreamAudit, "lasersell.big.audit.echo", 2, 5*time.Second)
	audits := env.Audits("lasersell.big.audit.echo")
	if len(audits) != 2 || audits[1].Code() != connector.CodeRequestTooLarge || audits[1].RequestBytes != 1025 || len(audits[1].Request) > 300 {
		t.Fatalf("audit: %+v", audits)
	}
	if got := env.MetricWhere("connector_command_duration_seconds", map[string]string{"session": "big", "command": "echo"}); got != 2 {
		t.Fatalf("command latency histogram holds %v samples, want 2", got)
	}
}

// Beyond the session's bucket, commands are refused with rate_limited (429)
// before the source sees them, requests and plain publishes alike; every
// refusal is counted, and the audit stream accounts for each one, one by one
// up to the audit budget and summed up beyond it.
func TestCommandRateLimit(t *testing.T) {
	t.Parallel()
	const rate, burst = 2, 5
	env := connectortest.Start(t, connectortest.Options{CommandRate: rate, CommandBurst: burst})
	src := newEcho(t, env, "rl", connector.LaneSizes{})
	newEcho(t, env, "calm", connector.LaneSizes{})
	env.Run()
	subj := subjects.Command(subjects.KindLaserSell, "rl", "echo")

	start := time.Now()
	ok, limited := 0, 0
	for i := 0; i < 20; i++ {
		msg, err := env.Conn.Request(subj, []byte(`{"word":"x"}`), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(string(msg.Data), `{"ok":true`):
			ok++
		case strings.Contains(string(msg.Data), `"code":"rate_limited"`) && msg.Header.Get(micro.ErrorCodeHeader) == "429":
			limited++
		default:
			t.Fatalf("unexpected reply %s", msg.Data)
		}
	}
	const floods = 400 // plain publishes: counted, audited, dropped
	for i := 0; i < floods; i++ {
		if err := env.Conn.Publish(subj, []byte(`{"word":"flood"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	total := 20 + floods
	connectortest.Eventually(t, 5*time.Second, "every command counted", func() bool {
		return env.MetricWhere("connector_commands_total", map[string]string{"session": "rl"}) == float64(total)
	})
	maxAdmitted := burst + int(time.Since(start).Seconds()*rate) + 1
	handled := src.handledCount()
	if ok < burst || handled > maxAdmitted || handled < ok {
		t.Fatalf("admitted %d (replied ok %d), want between %d and %d", handled, ok, burst, maxAdmitted)
	}
	refused := int(env.MetricWhere("connector_commands_total", map[string]string{"session": "rl", "outcome": connector.CodeRateLimited}))
	if refused != total-handled || limited != 20-ok {
		t.Fatalf("rate_limited counted %d, want %d (requests refused: %d)", refused, total-handled, limited)
	}
	// The other session has its own bucket.
	if r := env.Request(subjects.Command(subjects.KindLaserSell, "calm", "echo"), `{"word":"y"}`, 2*time.Second); !r.OK {
		t.Fatalf("a quiet session was limited by another's flood: %+v", r.Raw)
	}
	// The audit stream accounts for every refusal once the summary is written
	// (one second after the first suppressed record), with far fewer records.
	connectortest.Eventually(t, 10*time.Second, "every rate_limited refusal audited", func() bool {
		return env.AuditedRefusals("lasersell.rl.audit.>")[connector.CodeRateLimited] == refused
	})
	if n := len(env.Audits("lasersell.rl.audit.>")); n >= total {
		t.Fatalf("%d audit records for %d commands: the flood was not summed up", n, total)
	}
}

// A command for a session this connector does not serve is refused at once
// with unknown_session naming the sessions it serves; it is counted (without
// the requested name as a label) and audited. With QuietUnknownSessions it is
// left unanswered.
func TestCommandUnknownSession(t *testing.T) {
	t.Parallel()
	env := connectortest.Start(t, connectortest.Options{})
	newEcho(t, env, "s1", connector.LaneSizes{})
	newEcho(t, env, "s2", connector.LaneSizes{})
	env.Run()

	start := time.Now()
	msg, err := env.Conn.Request(subjects.Command(subjects.KindLaserSell, "nope", "echo"), []byte(`{"word":"x"}`), 2*time.Second)
	if err != nil {
		t.Fatalf("no fast reply: %v", err)
	}
	took := time.Since(start)
	var r struct {
		OK    bool                    `json:"ok"`
		Error *connector.CommandError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.OK || r.Error == nil || r.Error.Code != connector.CodeUnknownSession ||
		!strings.Contains(r.Error.Message, "s1, s2") || msg.Header.Get(micro.ErrorCodeHeader) != "404" {
		t.Fatalf("reply %s (headers %v)", msg.Data, msg.Header)
	}
	if took > time.Second {
		t.Fatalf("unknown_session took %s", took)
	}
	t.Logf("unknown_session reply in %s", took)
	// An unknown command of a served session, and a plain publish.
	if r := env.Request(subjects.Command(subjects.KindLaserSell, "s1", "nope"), `{}`, 2*time.Second); r.Error == nil || r.Error.Code != connector.CodeUnknownCommand {
		t.Fatalf("unknown command: %+v", r.Raw)
	}
	if err := env.Conn.Publish(subjects.Command(subjects.KindLaserSell, "ghost", "x"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	connectortest.Eventually(t, 5*time.Second, "unknown sessions counted", func() bool {
		return env.MetricWhere("connector_commands_total", map[string]string{"session": "_unknown", "outcome": connector.CodeUnknownSession}) == 2
	})
	if got := env.MetricWhere("connector_commands_total", map[string]string{"session": "_unknown", "command": "echo"}); got != 1 {
		t.Fatalf("a known command name keeps its label: %v", got)
	}
	if n := env.WaitCount(subjects.StreamAudit, "lasersell.nope.audit.echo", 1, 5*time.Second); n != 1 {
		t.Fatalf("unknown_session audit records: %d", n)
	}
	if n := env.WaitCount(subjects.StreamAudit, "lasersell.ghost.audit.x", 1, 5*time.Second); n != 1 {
		t.Fatalf("unknown_session audit records of the publish: %d", n)
	}
	if got := env.AuditedRefusals("lasersell.s1.audit.nope")[connector.CodeUnknownCommand]; got != 1 {
		t.Fatalf("unknown_command audited %d times", got)
	}

	quiet := connectortest.Start(t, connectortest.Options{QuietUnknownSessions: true})
	newEcho(t, quiet, "s1", connector.LaneSizes{})
	quiet.Run()
	_, err = quiet.Conn.Request(subjects.Command(subjects.KindLaserSell, "nope", "echo"), []byte(`{}`), 200*time.Millisecond)
	if !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("quiet: want a timeout, got %v", err)
	}
}
