package replay_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/replay"
	"github.com/jetbridge/connector/subjects"
)

func TestRepublishIntoSandboxStreamKeepsHeadersAndNamesTheOrigin(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "SANDBOX", Subjects: []string{"sandbox.>"}, Storage: jetstream.MemoryStorage, Duplicates: time.Hour}); err != nil {
		t.Fatalf("sandbox stream: %v", err)
	}
	var orig []published
	for i, w := range []string{"W1", "W2", "W1"} {
		h := nats.Header{subjects.HeaderMsgID: {"exit-" + strconv.Itoa(i)}, subjects.HeaderType: {"exit_signal_with_tx"}, "Multi": {"a", "b"}}
		orig = append(orig, e.publish(subjects.LaserSellExit("r", w), []byte(`{"n":`+strconv.Itoa(i)+`,"bin":"\u00ff"}`), h))
	}
	liveBefore := liveCount(t, e)

	for round := 1; round <= 2; round++ {
		sum, err := replay.Run(ctx, e.js, replay.Options{Subjects: []string{"lasersell.r.exit.*"}, Prefix: "sandbox", Kinds: kinds})
		if err != nil || sum.Written != 3 {
			t.Fatalf("round %d: %+v, %v", round, sum, err)
		}
	}
	// Without Nats-Msg-Id, the second round is stored too instead of being
	// taken for duplicates of the first.
	copies := fetchAll(t, e.js, "SANDBOX", 6)
	for i, m := range copies {
		o := orig[i%3]
		if m.Subject() != "sandbox."+o.subject || string(m.Data()) != string(o.data) {
			t.Fatalf("copy %d: %s %q, want sandbox.%s %q", i, m.Subject(), m.Data(), o.subject, o.data)
		}
		h := m.Headers()
		if h.Get(subjects.HeaderMsgID) != "" {
			t.Fatalf("copy %d kept Nats-Msg-Id %q", i, h.Get(subjects.HeaderMsgID))
		}
		if h.Get(subjects.HeaderType) != "exit_signal_with_tx" || !slices.Equal(h.Values("Multi"), []string{"a", "b"}) {
			t.Fatalf("copy %d lost original headers: %v", i, h)
		}
		if h.Get(subjects.HeaderReplayStream) != subjects.StreamLaserSellExit || h.Get(subjects.HeaderReplaySeq) != strconv.FormatUint(o.seq, 10) {
			t.Fatalf("copy %d origin headers: %v, want %s/%d", i, h, subjects.StreamLaserSellExit, o.seq)
		}
		if at, err := time.Parse(time.RFC3339Nano, h.Get(subjects.HeaderReplayTime)); err != nil || !at.Equal(o.time) {
			t.Fatalf("copy %d original time %q, want %v", i, h.Get(subjects.HeaderReplayTime), o.time)
		}
	}
	if after := liveCount(t, e); after != liveBefore {
		t.Fatalf("live streams changed from %d to %d messages", liveBefore, after)
	}
}

func TestRepublishWithoutCapturingStreamUsesCoreNATS(t *testing.T) {
	e := newEnv(t)
	for range 4 {
		e.publish(subjects.OpenStreamEvent("arm", "ack"), []byte(`{"ok":true}`), nil)
	}
	sub, err := e.connect().SubscribeSync("scratch.>")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := replay.Run(ctx, e.js, replay.Options{Subjects: []string{"openstream.arm.event.*"}, Prefix: "scratch.team1", Speed: 10, Kinds: kinds}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("copy %d: %v", i, err)
		}
		if m.Subject != "scratch.team1.openstream.arm.event.ack" || m.Header.Get(subjects.HeaderReplayStream) != subjects.StreamOpenStreamEvent {
			t.Fatalf("copy %d: %s %v", i, m.Subject, m.Header)
		}
	}
}

func TestRepublishRefusesTargetsLiveStreamsCapture(t *testing.T) {
	e := newEnv(t)
	e.publish(subjects.LaserSellExit("r", "W"), []byte(`{}`), nil)
	e.publish(subjects.OpenStreamData("x", "pose"), []byte(`{}`), nil)
	e.publish(subjects.OpenStreamData("y", "pose"), []byte(`{}`), nil)

	// Everything published from here on is recorded; only JetStream API
	// traffic is expected.
	spy := e.connect()
	var mu sync.Mutex
	var seen []string
	if _, err := spy.Subscribe(">", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, m.Subject)
	}); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refused := func(prefix string, filters ...string) {
		t.Helper()
		sum, err := replay.Run(ctx, e.js, replay.Options{Subjects: filters, Prefix: prefix, Kinds: kinds})
		if !errors.Is(err, replay.ErrRefused) || sum.Written != 0 {
			t.Errorf("prefix %q for %v: got %v (%d written), want a refusal", prefix, filters, err, sum.Written)
		}
	}
	exit := "lasersell.r.exit.*"
	for _, prefix := range []string{
		"lasersell", "openstream", "lasersell.sandbox", "openstream.copy.v2", "LaserSell", "OPENSTREAM.x",
		"sandbox.*", "sandbox.>", "sandbox..x", "sandbox.", ".sandbox", "sand box", "sandbox\tx",
		"$JS.API", "$KV.CONNECTOR_STATUS", "_INBOX.me",
	} {
		refused(prefix, exit)
	}

	// An operator widened a connector stream on the server: its real config
	// counts, not only the declared patterns.
	audit, err := e.js.Stream(ctx, subjects.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	cfg := audit.CachedInfo().Config
	cfg.Subjects = append(cfg.Subjects, "mirror.*", "sandbox.openstream.x.>")
	if _, err := e.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("widen audit stream: %v", err)
	}
	refused("mirror", exit)
	refused("mirror.deep", exit)
	refused("sandbox", "openstream.x.data.*")
	refused("sandbox", "openstream.*.data.*")

	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, s := range seen {
		if !strings.HasPrefix(s, "$JS.") && !strings.HasPrefix(s, "_INBOX.") {
			t.Errorf("something was published on %s", s)
		}
	}
	mu.Unlock()

	// Control: targets no live stream captures are accepted.
	for _, ok := range []struct{ prefix, filter string }{
		{"sandbox_copy", "openstream.x.data.*"}, {"openstream_copy", exit}, {"replay.lasersell", exit},
	} {
		if _, err := replay.Run(ctx, e.js, replay.Options{Subjects: []string{ok.filter}, Prefix: ok.prefix, Kinds: kinds}); err != nil {
			t.Errorf("prefix %q for %s refused: %v", ok.prefix, ok.filter, err)
		}
	}
}

// liveCount is the number of messages in all the connector's streams.
func liveCount(t *testing.T, e *env) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n uint64
	for _, spec := range subjects.Streams(kinds...) {
		s, err := e.js.Stream(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		n += s.CachedInfo().State.Msgs
	}
	return n
}

// fetchAll checks that a stream holds exactly want messages and reads them.
func fetchAll(t *testing.T, js jetstream.JetStream, stream string, want int) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(want) {
		t.Fatalf("%s holds %d messages, want %d", stream, info.State.Msgs, want)
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < want {
		m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatalf("read %s message %d: %v", stream, len(out)+1, err)
		}
		out = append(out, m)
	}
	return out
}
