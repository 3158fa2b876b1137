package connector

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The single-lane measurement mode's path (a high-lane publisher with a
// window, Options.SingleLane): every event is stored once, counted once, and
// its latency is measured from its own receive time, also when its publish
// failed and the retrier stored it.
func TestSingleLaneModePublishesAndRetries(t *testing.T) {
	nc, js := startTestJS(t, "SINGLE", "single.>")
	ctx := context.Background()
	// Refuse all but the first 3 events (stream_full), so the retrier runs.
	st, err := js.Stream(ctx, "SINGLE")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 3, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	m := NewMetrics(prometheus.NewRegistry()).lane("test", "single", LaneHigh)
	q := newHighQueue(64)
	p := &publisher{
		queue: q, window: 8, metrics: m, conn: nc, ackTimeout: 2 * time.Second,
		build: testMessage, log: zerolog.Nop(),
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.run(runCtx) }()

	// Received an hour ago: every latency observation must be about an hour,
	// which only the event's own receive time gives.
	const n = 40
	received := time.Now().Add(-time.Hour)
	for i := range n {
		if err := q.put(ctx, queued{Event: Event{Subject: "single.x", Payload: []byte(strconv.Itoa(i)), Received: received}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "stream_full to be counted", func() bool {
		return counter(t, m.errors.WithLabelValues(reasonStreamFull)) > 0
	})
	cfg.MaxMsgs = -1
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	q.close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the publisher did not drain")
	}

	if got := subjectCount(t, js, "SINGLE", "single.>"); got != n {
		t.Fatalf("stream holds %d events, want %d", got, n)
	}
	if got := counter(t, m.published); got != n {
		t.Fatalf("published %v, want %d", got, n)
	}
	if got := counter(t, m.retries); got == 0 {
		t.Fatal("no retry: the retrier was not exercised")
	}
	if got := counter(t, m.failed); got != 0 {
		t.Fatalf("%v failed", got)
	}
	if got := counter(t, m.inflight); got != 0 {
		t.Fatalf("%v still in flight", got)
	}
	count, sum := readMetric(t, m.latency)
	if count != n {
		t.Fatalf("latency observed %v times, want %d", count, n)
	}
	if lo, hi := n*time.Hour.Seconds(), n*(time.Hour+time.Minute).Seconds(); sum < lo || sum > hi {
		t.Fatalf("latency sum %vs, want about %d hours", sum, n)
	}
}
