package connector

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// lowMessage builds a message the way Host.message does for the low lane.
func lowMessage(it queued) *nats.Msg {
	return &nats.Msg{Subject: it.Subject, Data: it.Payload, Header: nats.Header{
		subjects.HeaderReceived: {it.Received.UTC().Format(time.RFC3339Nano)},
		subjects.HeaderSeq:      {fmt.Sprint(it.seq)},
	}}
}

type testLane struct {
	name   string
	queue  *lowQueue
	lane   *pumpLane
	put    atomic.Int64
	metric laneMetrics
}

// Removing one session's low lane while others publish: its queued events
// are all published and their acks charged to it, the pump forgets it, and
// the other lanes lose nothing.
func TestPumpRemoveLaneWhileOthersPublish(t *testing.T) {
	nc, js := startTestJS(t, "PUMP", "pump.>")
	metrics := NewMetrics(prometheus.NewRegistry())
	pump := newLowPump(nc, &modeReport{mode: LowLanePerMessage}, yielder{}, 64, 5*time.Second, time.Millisecond, zerolog.Nop())
	const capacity = 1 << 15 // large enough that nothing is dropped
	lanes := make([]*testLane, 4)
	for i := range lanes {
		name := fmt.Sprintf("s%d", i)
		m := metrics.lane("pump", name, LaneLow)
		q := newLowQueue(capacity, m.dropped.Inc, nil, pump.wake)
		l := &testLane{name: name, queue: q, metric: m,
			lane: &pumpLane{queue: q, build: lowMessage, metrics: m, log: zerolog.Nop()}}
		pump.add("pump."+name+".", l.lane)
		lanes[i] = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- pump.run(ctx) }()

	// s1..s3 publish a steady trickle (up to 5000/s each) until told to stop.
	stopTrickle := make(chan struct{})
	var producers sync.WaitGroup
	for _, l := range lanes[1:] {
		producers.Add(1)
		go func() {
			defer producers.Done()
			for {
				select {
				case <-stopTrickle:
					return
				default:
				}
				for range 5 {
					if !l.queue.put(queued{Event: Event{Subject: "pump." + l.name + ".t", Payload: []byte("{}"), Received: time.Now()}}) {
						t.Errorf("%s: lane closed", l.name)
						return
					}
					l.put.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}

	// s0 queues a burst, is closed (as its session stops) and removed at once.
	gone := lanes[0]
	const burst = 20000
	for range burst {
		gone.queue.put(queued{Event: Event{Subject: "pump.s0.t", Payload: []byte("{}"), Received: time.Now()}})
	}
	gone.put.Store(burst)
	gone.queue.close()
	t.Logf("s0 holds %d of its %d events when it is removed", gone.queue.depth(), burst)
	removed := pump.remove("pump.s0.")
	if again := pump.remove("pump.s0."); again != removed {
		t.Error("a second removal of the same lane is a different removal")
	}
	select {
	case <-removed:
	case <-time.After(30 * time.Second):
		t.Fatal("the removed lane was not drained")
	}
	if d := gone.queue.depth(); d != 0 {
		t.Fatalf("the removed lane still holds %d events", d)
	}
	if slices.Contains(pump.lanesNow(), gone.lane) {
		t.Fatal("the pump still polls the removed lane")
	}
	pump.mu.RLock()
	_, known := pump.byPrefix["pump.s0."]
	pump.mu.RUnlock()
	if known {
		t.Fatal("the pump still knows the removed lane's prefix")
	}
	// Acks of its last events may arrive after the removal: still its own.
	waitFor(t, 10*time.Second, "s0's events to be acknowledged", func() bool {
		return counter(t, gone.metric.published) == burst
	})
	if got := subjectCount(t, js, "PUMP", "pump.s0.>"); got != burst {
		t.Fatalf("stream holds %d of s0's events, want %d", got, burst)
	}
	select {
	case <-pump.remove("pump.nobody."):
	default:
		t.Fatal("removing an unknown lane did not complete at once")
	}

	// The others kept publishing through the removal.
	before := counter(t, lanes[1].metric.published)
	waitFor(t, 10*time.Second, "s1 to keep publishing after the removal", func() bool {
		return counter(t, lanes[1].metric.published) > before
	})
	close(stopTrickle)
	producers.Wait()
	for _, l := range lanes[1:] {
		l.queue.close()
	}
	pump.close()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pump did not drain")
	}
	for _, l := range lanes {
		n := l.put.Load()
		if got := counter(t, l.metric.published); got != float64(n) {
			t.Errorf("%s: published %v of %d", l.name, got, n)
		}
		if got := subjectCount(t, js, "PUMP", "pump."+l.name+".>"); got != uint64(n) {
			t.Errorf("%s: stream holds %d of %d", l.name, got, n)
		}
		if d, f := counter(t, l.metric.dropped), counter(t, l.metric.failed); d != 0 || f != 0 {
			t.Errorf("%s: %v dropped, %v failed", l.name, d, f)
		}
		if c, _ := readMetric(t, l.metric.latency); c != float64(n) {
			t.Errorf("%s: latency observed %v times for %d events", l.name, c, n)
		}
	}
	select {
	case <-pump.remove("pump.s1."):
	default:
		t.Fatal("a removal after the pump stopped did not complete at once")
	}
}
