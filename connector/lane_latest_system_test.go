package connector_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// TestKeepLatestDeliversEverySubjectsLastUpdate: with
// CONNECTOR_LOW_LANE_SHED=latest, a small low lane flooded with updates of
// one busy and many quiet positions, against a real JetStream, gives up only
// superseded updates: each position's last update is stored, every event is accounted
// for (published, dropped or superseded), and the Connector-Seq gaps in
// JetStream are exactly the drops.
func TestKeepLatestDeliversEverySubjectsLastUpdate(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{LowLaneKeepLatest: true})
	stop := env.Run()
	defer stop()
	const session, n = "latest", 30000
	host := env.Host(subjects.KindLaserSell, session, connector.LaneSizes{Low: 64})
	last := map[string]int{}
	for i := range n {
		// One hot position (every other update) and 40 quiet ones: a
		// quiet one with nothing queued makes room by a drop.
		pos := "hot"
		if i%2 == 1 {
			pos = strconv.Itoa(i / 2 % 40)
		}
		err := host.Emit(context.Background(), connector.Event{
			Subject: subjects.LaserSellPnL(session, pos), Lane: connector.LaneLow, Type: "pnl_update",
			Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`),
		})
		if err != nil {
			t.Fatalf("emit %d: %v", i, err)
		}
		last[pos] = i
	}
	where := map[string]string{"source": subjects.KindLaserSell, "session": session}
	lowWhere := map[string]string{"source": subjects.KindLaserSell, "session": session, "lane": "low"}
	var published, dropped, superseded float64
	connectortest.Eventually(t, 15*time.Second, "every event published, dropped or superseded", func() bool {
		published = env.MetricWhere("connector_published_total", lowWhere)
		dropped = env.MetricWhere("connector_lane_dropped_total", where)
		superseded = env.MetricWhere("connector_lane_superseded_total", where)
		return published+dropped+superseded >= n
	})
	if published+dropped+superseded != n {
		t.Fatalf("published %v + dropped %v + superseded %v != %d", published, dropped, superseded, n)
	}
	if superseded == 0 || dropped == 0 {
		t.Fatalf("superseded %v, dropped %v (published %v): the test did not exercise both ways of making room", superseded, dropped, published)
	}

	// What JetStream holds: in order, each position's last update among it,
	// and Connector-Seq gaps that add up to the drops.
	every := strings.TrimSuffix(subjects.LaserSellPnL(session, "0"), "0") + "*" // the function escapes a wildcard
	stored := env.Fetch(subjects.StreamLaserSellPnL, every, int(published), 15*time.Second)
	if float64(len(stored)) != published {
		t.Fatalf("stored %d, published %v", len(stored), published)
	}
	gaps, prevSeq := 0, 0
	newest := map[string]int{}
	for _, m := range stored {
		seq, err := strconv.Atoi(m.Headers().Get(subjects.HeaderSeq))
		if err != nil || seq <= prevSeq {
			t.Fatalf("Connector-Seq %q after %d", m.Headers().Get(subjects.HeaderSeq), prevSeq)
		}
		gaps += seq - prevSeq - 1
		prevSeq = seq
		k, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(string(m.Data()), `{"n":`), "}"))
		if err != nil {
			t.Fatalf("stored body %q", m.Data())
		}
		pos := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		if k <= newest[pos] && newest[pos] != 0 {
			t.Fatalf("position %s: update %d stored after %d", pos, k, newest[pos])
		}
		newest[pos] = k
	}
	for pos, want := range last {
		if newest[pos] != want {
			t.Errorf("position %s: last stored update %d, want its last one %d", pos, newest[pos], want)
		}
	}
	// The numbers run to the last one handed out: a gap after the last
	// stored event would be a drop at the end of the lane.
	if float64(gaps) != dropped {
		t.Fatalf("Connector-Seq gaps %d, dropped %v", gaps, dropped)
	}
	t.Logf("%d updates of %d positions through a lane of 64: published %v, superseded %v, dropped %v", n, len(last), published, superseded, dropped)
}
