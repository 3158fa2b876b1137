package connector_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// TestSourceAuditsItsOwnCommand: a record a source writes with Host.Audit
// lands in the audit stream in the shape of the runtime's own records, with
// its origin, the time in UTC and the reply built like a command reply.
func TestSourceAuditsItsOwnCommand(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	h := env.Host(subjects.KindLaserSell, "au1", connector.LaneSizes{})
	env.Run()
	ctx := context.Background()

	if err := h.Audit(ctx, connector.AuditRecord{Origin: "timer"}); err == nil {
		t.Fatal("a record without a command was accepted")
	}
	issued := time.Date(2026, 5, 6, 7, 8, 9, 10000, time.FixedZone("east", 2*3600))
	err := h.Audit(ctx, connector.AuditRecord{
		Command: "tick", Origin: "timer", Received: issued, DurationMS: 0.25,
		Request: json.RawMessage(`{"n":1}`),
		Reply:   connector.Reply(map[string]int{"sent": 1}, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := env.Fetch(subjects.StreamAudit, subjects.Audit(subjects.KindLaserSell, "au1", "tick"), 1, 3*time.Second)
	if got := msgs[0].Headers().Get(subjects.HeaderType); got != "audit" {
		t.Errorf("Connector-Type %q, want audit", got)
	}
	var rec map[string]any
	if err := json.Unmarshal(msgs[0].Data(), &rec); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"command": "tick", "origin": "timer", "received": "2026-05-06T05:08:09.00001Z",
		"duration_ms": 0.25, "wants_reply": false,
		"request": map[string]any{"n": 1.0}, "reply": map[string]any{"ok": true, "sent": 1.0},
	}
	if b, _ := json.Marshal(want); string(b) != mustJSON(t, rec) {
		t.Fatalf("record %s, want %s", msgs[0].Data(), b)
	}
}

func TestReplyIsTheCommandReply(t *testing.T) {
	for _, tc := range []struct {
		result any
		err    error
		want   string
	}{
		{nil, nil, `{"ok":true}`},
		{struct{}{}, nil, `{"ok":true}`},
		{map[string]int{"n": 2}, nil, `{"ok":true,"n":2}`},
		{nil, connector.Refuse("no_way", "refused"), `{"ok":false,"error":{"code":"no_way","message":"refused"}}`},
	} {
		if got := string(connector.Reply(tc.result, tc.err)); got != tc.want {
			t.Errorf("Reply(%v, %v) = %s, want %s", tc.result, tc.err, got, tc.want)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
