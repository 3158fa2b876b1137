package replay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/replay"
	"github.com/jetbridge/connector/subjects"
)

// kinds are the connector's source kinds: their streams are provisioned and
// re-publishing keeps clear of them.
var kinds = []subjects.Kind{subjects.LaserSell(), subjects.OpenStream()}

// env is an embedded JetStream server with the connector's streams.
type env struct {
	t   *testing.T
	srv *embednats.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Stop)
	e := &env{t: t, srv: srv}
	e.nc = e.connect()
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	memory := func(spec subjects.StreamSpec) connector.Retention {
		r := connector.DefaultRetention(spec)
		r.Storage = "memory"
		return r
	}
	if _, err := connector.Provision(ctx, e.js, subjects.Streams(kinds...), memory, nil, 1); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return e
}

func (e *env) connect() *nats.Conn {
	e.t.Helper()
	nc, err := nats.Connect(e.srv.URL())
	if err != nil {
		e.t.Fatalf("connect: %v", err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

// published is what the test put into a stream.
type published struct {
	subject string
	seq     uint64
	time    time.Time
	header  nats.Header
	data    []byte
}

// publish stores one message and reads back its stored publish time.
func (e *env) publish(subject string, data []byte, header nats.Header) published {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: header})
	if err != nil {
		e.t.Fatalf("publish %s: %v", subject, err)
	}
	stream, err := e.js.Stream(ctx, ack.Stream)
	if err != nil {
		e.t.Fatalf("stream %s: %v", ack.Stream, err)
	}
	raw, err := stream.GetMsg(ctx, ack.Sequence)
	if err != nil {
		e.t.Fatalf("get %s/%d: %v", ack.Stream, ack.Sequence, err)
	}
	return published{subject: subject, seq: ack.Sequence, time: raw.Time, header: header, data: data}
}

// run replays to NDJSON and decodes the records.
func (e *env) run(opts replay.Options) ([]replay.Record, replay.Summary) {
	e.t.Helper()
	var out bytes.Buffer
	opts.Output = &out
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sum, err := replay.Run(ctx, e.js, opts)
	if err != nil {
		e.t.Fatalf("replay %+v: %v", opts.Subjects, err)
	}
	recs, err := replay.DecodeRecords(&out)
	if err != nil {
		e.t.Fatalf("decode NDJSON: %v\n%s", err, out.String())
	}
	if uint64(len(recs)) != sum.Written {
		e.t.Fatalf("summary says %d written, output has %d records", sum.Written, len(recs))
	}
	return recs, sum
}

func subjectsOf(recs []replay.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Subject
	}
	return out
}

func seqsOf(recs []replay.Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func TestSubjectFiltersSelectMessagesInStreamOrder(t *testing.T) {
	e := newEnv(t)
	for _, s := range []string{
		subjects.LaserSellExit("a", "W1"), subjects.LaserSellExit("b", "W1"), subjects.LaserSellPnL("a", "P1"),
		subjects.LaserSellExit("a", "W2"), subjects.LaserSellExit("c", "W3"), subjects.LaserSellExit("a", "W1"),
	} {
		e.publish(s, []byte(`{}`), nil)
	}

	recs, sum := e.run(replay.Options{Subjects: []string{"lasersell.a.exit.*"}})
	if want := []string{"lasersell.a.exit.W1", "lasersell.a.exit.W2", "lasersell.a.exit.W1"}; !slices.Equal(subjectsOf(recs), want) {
		t.Fatalf("one wildcard: got %v, want %v", subjectsOf(recs), want)
	}
	if sum.Stream != subjects.StreamLaserSellExit || recs[0].Stream != subjects.StreamLaserSellExit {
		t.Fatalf("stream found from the subject: summary %q, record %q", sum.Stream, recs[0].Stream)
	}
	if !slices.IsSorted(seqsOf(recs)) || sum.FirstSeq != recs[0].Seq || sum.LastSeq != recs[2].Seq {
		t.Fatalf("seqs %v not in order or summary %+v wrong", seqsOf(recs), sum)
	}

	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.*.exit.W1", "lasersell.c.exit.>"}})
	if want := []string{"lasersell.a.exit.W1", "lasersell.b.exit.W1", "lasersell.c.exit.W3", "lasersell.a.exit.W1"}; !slices.Equal(subjectsOf(recs), want) {
		t.Fatalf("several filters: got %v, want %v", subjectsOf(recs), want)
	}

	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.nobody.exit.*"}, Stream: subjects.StreamLaserSellExit})
	if len(recs) != 0 {
		t.Fatalf("filter matching nothing: got %v", subjectsOf(recs))
	}
}

func TestStreamLookupRefusesAmbiguousOrUnknownFilters(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, err := replay.Run(ctx, e.js, replay.Options{Subjects: []string{"lasersell.>"}, Output: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), subjects.StreamLaserSellExit) || !strings.Contains(err.Error(), subjects.StreamLaserSellPnL) {
		t.Fatalf("lasersell.> spans several streams: got %v", err)
	}
	_, err = replay.Run(ctx, e.js, replay.Options{Subjects: []string{"nowhere.x"}, Output: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), "no stream captures") {
		t.Fatalf("uncaptured filter: got %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	now := time.Now()
	for name, o := range map[string]replay.Options{
		"no subject":        {Output: &bytes.Buffer{}},
		"bad filter":        {Subjects: []string{"a.>.b"}, Output: &bytes.Buffer{}},
		"empty token":       {Subjects: []string{"a..b"}, Output: &bytes.Buffer{}},
		"time and seq":      {Subjects: []string{"a"}, Since: now, EndSeq: 3, Output: &bytes.Buffer{}},
		"until before":      {Subjects: []string{"a"}, Since: now, Until: now.Add(-time.Second), Output: &bytes.Buffer{}},
		"end before start":  {Subjects: []string{"a"}, StartSeq: 5, EndSeq: 4, Output: &bytes.Buffer{}},
		"no output":         {Subjects: []string{"a"}},
		"two outputs":       {Subjects: []string{"a"}, Output: &bytes.Buffer{}, Prefix: "sandbox"},
		"negative speed":    {Subjects: []string{"a"}, Output: &bytes.Buffer{}, Speed: -1},
		"whitespace filter": {Subjects: []string{"a b"}, Output: &bytes.Buffer{}},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (replay.Options{Subjects: []string{"a.*.>"}, Output: &bytes.Buffer{}, StartSeq: 2, EndSeq: 2}).Validate(); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
	for in, want := range map[string]float64{"max": 0, "1": 1, "10": 10, "10x": 10, "0.5": 0.5} {
		if got, err := replay.ParseSpeed(in); err != nil || got != want {
			t.Errorf("ParseSpeed(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "-1", "fast", "", "inf", "NaN"} {
		if _, err := replay.ParseSpeed(in); err == nil {
			t.Errorf("ParseSpeed(%q) accepted", in)
		}
	}
}

func TestTimeRangeSelectsByPublishTime(t *testing.T) {
	e := newEnv(t)
	var all []published
	for i := range 9 {
		all = append(all, e.publish(subjects.LaserSellExit("t", "W"), fmt.Appendf(nil, `{"i":%d}`, i), nil))
	}
	since, until := all[3].time, all[5].time
	var want []uint64
	for _, p := range all {
		if !p.time.Before(since) && !p.time.After(until) {
			want = append(want, p.seq)
		}
	}
	if len(want) < 3 {
		t.Fatalf("setup: messages 3..5 should be in their own range, got %v", want)
	}

	recs, _ := e.run(replay.Options{Subjects: []string{"lasersell.t.exit.*"}, Since: since, Until: until})
	if !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("since+until: got %v, want %v", seqsOf(recs), want)
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.t.exit.*"}, Since: all[7].time})
	if got := seqsOf(recs); len(got) == 0 || got[0] > all[7].seq || got[len(got)-1] != all[8].seq {
		t.Fatalf("since only: got %v, want through %d", got, all[8].seq)
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.t.exit.*"}, Until: all[1].time})
	if got := seqsOf(recs); len(got) == 0 || got[0] != all[0].seq || got[len(got)-1] > all[1].seq {
		t.Fatalf("until only: got %v, want from %d to at most %d", got, all[0].seq, all[1].seq)
	}
	for _, r := range recs {
		if r.Time.Location() != time.UTC || r.Time.After(all[1].time) {
			t.Fatalf("record time %v not UTC or after until", r.Time)
		}
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.t.exit.*"}, Since: time.Now().Add(time.Hour)})
	if len(recs) != 0 {
		t.Fatalf("since in the future: got %v", seqsOf(recs))
	}
}

func TestSequenceRangeSelectsBySequence(t *testing.T) {
	e := newEnv(t)
	var seqs []uint64
	for i := range 8 {
		wallet := "W"
		if i%2 == 1 {
			wallet = "X"
		}
		seqs = append(seqs, e.publish(subjects.LaserSellExit("s", wallet), []byte(`{}`), nil).seq)
	}
	recs, _ := e.run(replay.Options{Subjects: []string{"lasersell.s.exit.*"}, StartSeq: seqs[2], EndSeq: seqs[5]})
	if !slices.Equal(seqsOf(recs), seqs[2:6]) {
		t.Fatalf("start+end: got %v, want %v", seqsOf(recs), seqs[2:6])
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.s.exit.W"}, StartSeq: seqs[1], EndSeq: seqs[6]})
	if want := []uint64{seqs[2], seqs[4], seqs[6]}; !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("start+end with filter: got %v, want %v", seqsOf(recs), want)
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.s.exit.*"}, StartSeq: seqs[6]})
	if !slices.Equal(seqsOf(recs), seqs[6:]) {
		t.Fatalf("start only: got %v, want %v", seqsOf(recs), seqs[6:])
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.s.exit.*"}, EndSeq: seqs[1]})
	if !slices.Equal(seqsOf(recs), seqs[:2]) {
		t.Fatalf("end only: got %v, want %v", seqsOf(recs), seqs[:2])
	}
	recs, _ = e.run(replay.Options{Subjects: []string{"lasersell.s.exit.*"}, StartSeq: seqs[7] + 100})
	if len(recs) != 0 {
		t.Fatalf("start beyond the end: got %v", seqsOf(recs))
	}
}

func TestPayloadsAndHeadersAreExact(t *testing.T) {
	e := newEnv(t)
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	payloads := [][]byte{
		[]byte(`{"type":"exit_signal_with_tx","tx":"a<b>&c"}`),
		{},
		[]byte("\xff\xfe\x00 not utf-8"),
		[]byte("h\u00e9llo \u2028 \u2029 \x00 \t \"quoted\" \\ \U0001F680"),
		[]byte("valid prefix then bad \xc3"),
		big,
	}
	headers := []nats.Header{
		{"Nats-Msg-Id": {"id-1"}, subjects.HeaderType: {"exit_signal_with_tx"}},
		nil,
		{"Multi": {"one", "two", ""}, "Nats-Msg-Id": {"id-3"}},
		{"Unicode": {"\u00e9t\u00e9"}},
		{"X": {"1"}},
		{"Big": {"yes"}},
	}
	for i, p := range payloads {
		e.publish(subjects.LaserSellEvent("p", "type", fmt.Sprint(i)), p, headers[i])
	}

	var out bytes.Buffer
	if _, err := replay.Run(context.Background(), e.js, replay.Options{Subjects: []string{"lasersell.p.event.>"}, Output: &out}); err != nil {
		t.Fatalf("replay: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(payloads) {
		t.Fatalf("%d lines for %d messages", len(lines), len(payloads))
	}
	recs, err := replay.DecodeRecords(strings.NewReader(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		got, err := r.Payload()
		if err != nil || !bytes.Equal(got, payloads[i]) {
			t.Fatalf("payload %d: got %q (%v), want %q", i, truncate(got), err, truncate(payloads[i]))
		}
		textual := strings.Contains(lines[i], `"data":`)
		binary := strings.Contains(lines[i], `"data_base64":`)
		if wantText := i != 2 && i != 4 && i != 5; textual != wantText || binary == wantText {
			t.Fatalf("payload %d: data present %v, data_base64 present %v, want text %v", i, textual, binary, wantText)
		}
		want := map[string][]string(headers[i])
		if want == nil {
			want = map[string][]string{}
		}
		if fmt.Sprint(r.Headers) != fmt.Sprint(want) {
			t.Fatalf("headers %d: got %v, want %v", i, r.Headers, want)
		}
	}
	if !strings.Contains(lines[0], `a<b>&c`) {
		t.Fatalf("JSON text should stay readable (no HTML escaping): %s", lines[0])
	}
}

func truncate(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

func TestStopsAtTheEndWhileTheStreamKeepsReceiving(t *testing.T) {
	e := newEnv(t)
	// More history than a consumer prefetches at once, so the replay is still
	// reading when the live messages arrive.
	const history = 3000
	for range history {
		if err := e.nc.Publish(subjects.OpenStreamData("arm", "pose"), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	e.publish(subjects.OpenStreamData("other", "pose"), []byte(`{}`), nil)

	// A live producer keeps adding to both subjects until the test ends.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nc := e.connect()
		for ctx.Err() == nil {
			_ = nc.Publish(subjects.OpenStreamData("arm", "pose"), []byte(`{}`))
			_ = nc.Publish(subjects.OpenStreamData("fresh", "pose"), []byte(`{}`))
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop(); wg.Wait() })
	waitFor(t, func() bool { return streamMsgs(t, e, subjects.StreamOpenStreamData) > history+100 })

	for _, filter := range []string{"openstream.arm.data.*", "openstream.other.data.*", "openstream.*.data.pose"} {
		start := time.Now()
		recs, _ := e.run(replay.Options{Subjects: []string{filter}, IdleTimeout: 30 * time.Second})
		if len(recs) == 0 {
			t.Fatalf("%s: nothing replayed", filter)
		}
		// e.run fails the test if its 10 s context ended the replay; the idle
		// timeout is longer, so returning means the stop point was found.
		t.Logf("%s: %d records in %v", filter, len(recs), time.Since(start))
	}
	// The stream's last sequence seen once the replay is under way bounds the
	// stop point from above: nothing published later may be replayed.
	var bound uint64
	start := time.Now()
	recs, _ := e.run(replay.Options{Subjects: []string{"openstream.arm.data.*"}, IdleTimeout: 30 * time.Second,
		Progress: func(p replay.Progress) {
			if p.Done == 1 && !p.Final {
				bound = streamLastSeq(t, e, subjects.StreamOpenStreamData)
			}
		}})
	if len(recs) <= history {
		t.Fatalf("%d records, want the live ones up to the start too", len(recs))
	}
	if last := recs[len(recs)-1].Seq; last > bound {
		t.Fatalf("replayed seq %d, published after the replay began (last seq then %d)", last, bound)
	}
	t.Logf("live subject, bounded: %d records in %v", len(recs), time.Since(start))
}

func streamLastSeq(t *testing.T, e *env, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

func streamMsgs(t *testing.T, e *env, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPacingFollowsPublishGaps(t *testing.T) {
	e := newEnv(t)
	const n, gap = 5, 300 * time.Millisecond
	var msgs []published
	for i := range n {
		if i > 0 {
			time.Sleep(gap) // builds the history; the assertions use the stored times
		}
		msgs = append(msgs, e.publish(subjects.LaserSellExit("pace", "W"), []byte(`{}`), nil))
	}
	span := msgs[n-1].time.Sub(msgs[0].time)

	// written[i] is when message i was handed to the output.
	replayAt := func(speed float64) []time.Time {
		var written []time.Time
		e.run(replay.Options{Subjects: []string{"lasersell.pace.exit.W"}, Speed: speed, Progress: func(p replay.Progress) {
			if !p.Final {
				written = append(written, time.Now())
			}
		}})
		if len(written) != n {
			t.Fatalf("speed %v: %d messages written, want %d", speed, len(written), n)
		}
		return written
	}
	for _, speed := range []float64{1, 10} {
		written := replayAt(speed)
		for i := 1; i < n; i++ {
			want := time.Duration(float64(msgs[i].time.Sub(msgs[0].time)) / speed)
			if got := written[i].Sub(written[0]); got < want {
				t.Fatalf("speed %v: message %d at +%v, before its due +%v", speed, i, got, want)
			}
		}
		total := written[n-1].Sub(written[0])
		if limit := time.Duration(float64(span)/speed) + span/2; total > limit {
			t.Fatalf("speed %v: took %v for a %v history, want at most %v", speed, total, span, limit)
		}
		t.Logf("speed %v: %v for a %v history", speed, total, span)
	}
	written := replayAt(0)
	if total := written[n-1].Sub(written[0]); total > span/4 {
		t.Fatalf("speed max: took %v for a %v history, want no waiting", total, span)
	}
}

func TestCancelStopsCleanlyAndFlushes(t *testing.T) {
	e := newEnv(t)
	var seqs []uint64
	for range 20 {
		seqs = append(seqs, e.publish(subjects.LaserSellExit("c", "W"), []byte(`{"x":1}`), nil).seq)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var final replay.Progress
	sum, err := replay.Run(ctx, e.js, replay.Options{
		Subjects: []string{"lasersell.c.exit.W"}, Output: &out,
		Progress: func(p replay.Progress) {
			if p.Done == 3 && !p.Final {
				cancel() // as Ctrl-C would, in the middle of the replay
			}
			if p.Final {
				final = p
			}
		},
	})
	if !errors.Is(err, context.Canceled) || !sum.Canceled {
		t.Fatalf("want a cancelled replay, got %v, %+v", err, sum)
	}
	if sum.Written != 3 || sum.LastSeq != seqs[2] {
		t.Fatalf("summary %+v, want 3 written through seq %d", sum, seqs[2])
	}
	recs, err := replay.DecodeRecords(&out)
	if err != nil || len(recs) != 3 || recs[2].Seq != seqs[2] {
		t.Fatalf("flushed output: %d records (%v), want 3 complete ones", len(recs), err)
	}
	if !final.Final || !final.Canceled || final.Done != 3 || final.Total != 20 {
		t.Fatalf("final progress %+v", final)
	}
}

func TestProgressFormat(t *testing.T) {
	got := replay.FormatProgress(replay.Progress{Done: 50, Total: 200, LastSeq: 77, Elapsed: 2 * time.Second})
	for _, want := range []string{"50/200", " 25%", "25 msg/s", "seq 77", "[######.................."} {
		if !strings.Contains(got, want) {
			t.Fatalf("%q lacks %q", got, want)
		}
	}
	if got := replay.FormatProgress(replay.Progress{Done: 10, Total: 200, Final: true}); !strings.Contains(got, "100%") {
		t.Fatalf("finished below the total (a range) should show complete: %q", got)
	}
	var buf bytes.Buffer
	bar := replay.NewBar(&buf, time.Hour)
	for i := range 100 {
		bar.Update(replay.Progress{Done: uint64(i + 1), Total: 100})
	}
	bar.Update(replay.Progress{Done: 100, Total: 100, Final: true})
	if n := strings.Count(buf.String(), "\r"); n != 2 {
		t.Fatalf("bar drew %d times for 100 quick updates and a final one, want 2 (throttled)", n)
	}
	if !strings.HasSuffix(buf.String(), "\n") {
		t.Fatalf("final update should end the line: %q", buf.String())
	}
}
