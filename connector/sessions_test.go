package connector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// Sessions reports what Emit and SetStatus did: counters per lane (equal to
// the Prometheus series), the last upstream event time, the status fields; and
// connector_events_by_type_total keeps at most MaxEventTypes types per session.
func TestSessionSnapshotAndEventTypes(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	t.Cleanup(env.Runtime.Close)
	h := env.Host(subjects.KindLaserSell, "snap", connector.LaneSizes{})
	ctx := context.Background()
	snap := env.Runtime.Sessions()
	if len(snap) != 1 || snap[0].LastEvent != nil || snap[0].Connected || snap[0].State != "" {
		t.Fatalf("fresh session snapshot %+v", snap)
	}

	if err := h.SetStatus(ctx, connector.Status{State: connector.StateConnected, UpstreamSession: "up-7",
		Limits: map[string]any{"hi_capacity": 8}}); err != nil {
		t.Fatal(err)
	}
	if got := env.Runtime.Sessions()[0].LastEvent; got != nil {
		t.Fatalf("a status is not an upstream event, but last_event is %v", got)
	}
	h.Metrics().Connected.Set(1)

	const distinct = connector.MaxEventTypes + 6
	received := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range distinct {
		typ := fmt.Sprintf("type_%02d", i)
		for range 2 {
			lane := connector.LaneHigh
			if i%2 == 1 {
				lane = connector.LaneLow
			}
			if err := h.Emit(ctx, connector.Event{Subject: subjects.LaserSellEvent("snap", typ, "k"), Lane: lane,
				Payload: []byte(`{}`), Type: typ, Received: received}); err != nil {
				t.Fatal(err)
			}
		}
	}
	connectortest.Eventually(t, 10*time.Second, "every event published", func() bool {
		return env.Count(subjects.StreamLaserSellEvents, "lasersell.snap.>") == 2*distinct+1 // and the status
	})

	s := env.Runtime.Sessions()[0]
	if !s.Connected || s.State != connector.StateConnected || s.UpstreamSession != "up-7" || s.Limits == nil {
		t.Fatalf("status fields %+v", s)
	}
	if s.LastEvent == nil || !s.LastEvent.Equal(received) {
		t.Fatalf("last_event %v, want %v", s.LastEvent, received)
	}
	high, low := s.Lanes["high"], s.Lanes["low"]
	// Half the types went to each lane, twice each; the high lane also carried the status.
	if high.Events != distinct+1 || low.Events != distinct || high.Published != distinct+1 || low.Published != distinct {
		t.Fatalf("lane counters high %+v low %+v", high, low)
	}
	if float64(high.Events+low.Events) != env.Metric("connector_events_total") {
		t.Fatalf("snapshot events %d differ from connector_events_total %v", high.Events+low.Events, env.Metric("connector_events_total"))
	}

	families, err := env.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byType := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "connector_events_by_type_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" {
					byType[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	// MaxEventTypes-1 upstream types plus "status" fill the cap; the other 7 share "other".
	if len(byType) != connector.MaxEventTypes+1 {
		t.Fatalf("%d type series, want %d: %v", len(byType), connector.MaxEventTypes+1, byType)
	}
	if byType["status"] != 1 || byType["type_00"] != 2 || byType["other"] != 2*7 {
		t.Fatalf("by-type counts: status %v type_00 %v other %v", byType["status"], byType["type_00"], byType["other"])
	}
}

// The cost of Emit on the low lane, which every telemetry event pays.
func BenchmarkEmitLow(b *testing.B) {
	env := connectortest.Start(b, connectortest.Options{})
	b.Cleanup(env.Runtime.Close)
	h := env.Host(subjects.KindLaserSell, "bench", connector.LaneSizes{Low: 1 << 16})
	ev := connector.Event{Subject: subjects.LaserSellPnL("bench", "p1"), Lane: connector.LaneLow,
		Payload: []byte(`{"type":"pnl_update"}`), Type: "pnl_update"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Emit(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}
