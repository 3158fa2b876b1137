package connector

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// startTestJS starts an embedded JetStream server with one stream capturing
// subjects, and returns a connection to it (closed at cleanup).
func startTestJS(t *testing.T, stream string, subjectFilters ...string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: subjectFilters}); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// testMessage builds a message the way Host.message does for the high lane:
// the receive time, the Connector-Seq and a Nats-Msg-Id.
func testMessage(it queued) *nats.Msg {
	seq := strconv.FormatUint(it.seq, 10)
	return &nats.Msg{Subject: it.Subject, Data: it.Payload, Header: nats.Header{
		subjects.HeaderReceived: {it.Received.UTC().Format(time.RFC3339Nano)},
		subjects.HeaderSeq:      {seq},
		subjects.HeaderMsgID:    {it.Subject + ":" + seq},
	}}
}

// readMetric reads a counter or gauge; for a histogram, its sample count
// and sum.
func readMetric(t *testing.T, c any) (value, sum float64) {
	t.Helper()
	m, ok := c.(prometheus.Metric)
	if !ok {
		t.Fatalf("%T is not a prometheus.Metric", c)
	}
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue(), 0
	case d.Gauge != nil:
		return d.Gauge.GetValue(), 0
	case d.Histogram != nil:
		return float64(d.Histogram.GetSampleCount()), d.Histogram.GetSampleSum()
	}
	t.Fatalf("metric %s has no value", m.Desc())
	return 0, 0
}

func counter(t *testing.T, c any) float64 {
	t.Helper()
	v, _ := readMetric(t, c)
	return v
}

// subjectCount is how many messages stream holds on filter.
func subjectCount(t *testing.T, js jetstream.JetStream, stream, filter string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
