package replay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// Options select what to replay and where to.
type Options struct {
	// Subjects are the subject filters (wildcards allowed); at least one.
	Subjects []string
	// Stream to read; empty means the one stream the server says captures the
	// filters.
	Stream string

	// A time range or a sequence range, not both. Zero values are open ends.
	Since, Until     time.Time
	StartSeq, EndSeq uint64

	// Exactly one output: NDJSON to Output, or re-publish under Prefix.
	Output io.Writer
	Prefix string
	// Kinds are the connector's source kinds: their first subject tokens and
	// stream patterns are live, and a re-publish target must stay clear of
	// them. Required with Prefix.
	Kinds []subjects.Kind

	// Speed divides the original gaps between publish times; 0 means as fast
	// as possible.
	Speed float64

	// Progress, when set, is called after every message and once at the end
	// (Progress.Final); it runs on the replay's goroutine and must be quick.
	Progress func(Progress)

	// IdleTimeout is how long to wait for a message the consumer says is
	// pending before asking the server again (messages can expire during a
	// replay). Default 5s.
	IdleTimeout time.Duration
}

// Progress is a replay's running count.
type Progress struct {
	Done uint64
	// Total is the number of matching messages from the start point when the
	// replay began; with Until or EndSeq the replay may finish below it.
	Total   uint64
	LastSeq uint64
	Elapsed time.Duration
	// Final marks the last call; Canceled that the replay was interrupted.
	Final, Canceled bool
}

// Summary says what a replay did.
type Summary struct {
	Stream   string
	Written  uint64
	FirstSeq uint64
	LastSeq  uint64
	// Canceled is set when the context ended the replay early.
	Canceled bool
}

// ParseSpeed reads "max" (as fast as possible) or a positive factor such as
// 1, 10, 0.5 or 10x.
func ParseSpeed(s string) (float64, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "max" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSuffix(s, "x"), 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("speed %q must be max or a positive factor such as 1 or 10", s)
	}
	return f, nil
}

// Validate reports options Run would refuse before touching the server.
func (o Options) Validate() error {
	if len(o.Subjects) == 0 {
		return errors.New("at least one subject filter is required")
	}
	for _, s := range o.Subjects {
		if err := validFilter(s); err != nil {
			return err
		}
	}
	byTime := !o.Since.IsZero() || !o.Until.IsZero()
	bySeq := o.StartSeq != 0 || o.EndSeq != 0
	switch {
	case byTime && bySeq:
		return errors.New("use a time range or a sequence range, not both")
	case !o.Since.IsZero() && !o.Until.IsZero() && o.Until.Before(o.Since):
		return fmt.Errorf("until %s is before since %s", o.Until.Format(time.RFC3339), o.Since.Format(time.RFC3339))
	case o.EndSeq != 0 && o.EndSeq < o.StartSeq:
		return fmt.Errorf("end sequence %d is before start sequence %d", o.EndSeq, o.StartSeq)
	case (o.Output == nil) == (o.Prefix == ""):
		return errors.New("exactly one output is required: an NDJSON writer or a re-publish prefix")
	case o.Speed < 0 || math.IsNaN(o.Speed) || math.IsInf(o.Speed, 0):
		return fmt.Errorf("speed %v must be 0 (max) or positive", o.Speed)
	}
	return nil
}

// Run replays history as opts say. On cancellation it stops cleanly, flushes
// what it wrote and returns the summary with ctx's error.
func Run(ctx context.Context, js jetstream.JetStream, opts Options) (Summary, error) {
	if err := opts.Validate(); err != nil {
		return Summary{}, err
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Second
	}
	name := opts.Stream
	if name == "" {
		var err error
		if name, err = findStream(ctx, js, opts.Subjects); err != nil {
			return Summary{}, err
		}
	}
	sum := Summary{Stream: name}

	var out sink
	if opts.Prefix != "" {
		rp, err := newRepublisher(ctx, js, opts.Prefix, opts.Subjects, opts.Kinds)
		if err != nil {
			return sum, err
		}
		out = rp
	} else {
		out = &ndjsonSink{buf: bufio.NewWriterSize(opts.Output, 64<<10)}
	}
	r := &reader{js: js, opts: opts, sum: &sum, out: out, began: time.Now()}
	err := r.run(ctx, name)
	// Flush even after a cancellation: everything counted as written must be
	// out. The flush gets its own short deadline because ctx may be over.
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if ferr := out.flush(flushCtx); ferr != nil && err == nil {
		err = ferr
	}
	if ctx.Err() != nil && (err == nil || errors.Is(err, ctx.Err())) {
		sum.Canceled = true
		err = ctx.Err()
	}
	if opts.Progress != nil {
		opts.Progress(Progress{Done: sum.Written, Total: r.total, LastSeq: sum.LastSeq, Elapsed: time.Since(r.began), Final: true, Canceled: sum.Canceled})
	}
	return sum, err
}

// findStream asks the server which stream captures the filters; they must all
// be in one.
func findStream(ctx context.Context, js jetstream.JetStream, filters []string) (string, error) {
	var found []string
	for _, f := range filters {
		lister := js.StreamNames(ctx, jetstream.WithStreamListSubject(f))
		var names []string
		for n := range lister.Name() {
			names = append(names, n)
		}
		if err := lister.Err(); err != nil {
			return "", fmt.Errorf("find the stream of %q: %w", f, err)
		}
		if len(names) == 0 {
			return "", fmt.Errorf("no stream captures %q", f)
		}
		for _, n := range names {
			if !slices.Contains(found, n) {
				found = append(found, n)
			}
		}
	}
	if len(found) > 1 {
		slices.Sort(found)
		return "", fmt.Errorf("the subject filters span streams %s: name one stream or narrow the filters", strings.Join(found, ", "))
	}
	return found[0], nil
}

// sink is where replayed messages go.
type sink interface {
	write(ctx context.Context, stream string, msg jetstream.Msg, meta *jetstream.MsgMetadata) error
	flush(ctx context.Context) error
}

type ndjsonSink struct {
	buf *bufio.Writer
	enc *recordEncoder
}

func (s *ndjsonSink) write(_ context.Context, stream string, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	if s.enc == nil {
		s.enc = newRecordEncoder(s.buf)
	}
	return s.enc.write(NewRecord(stream, msg.Subject(), meta.Sequence.Stream, meta.Timestamp, msg.Headers(), msg.Data()))
}

func (s *ndjsonSink) flush(context.Context) error {
	if err := s.buf.Flush(); err != nil {
		return fmt.Errorf("flush output: %w", err)
	}
	return nil
}

// reader drives one ordered consumer from the start point to the stop point.
type reader struct {
	js    jetstream.JetStream
	opts  Options
	sum   *Summary
	out   sink
	total uint64
	began time.Time

	// pacing: the first message's publish time and when it was written.
	paceOrigin, wallOrigin time.Time
}

func (r *reader) run(ctx context.Context, name string) error {
	stream, err := r.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	// The stop point is fixed now, so a stream that keeps receiving cannot
	// keep the replay going.
	stopSeq := stream.CachedInfo().State.LastSeq
	if r.opts.EndSeq != 0 && r.opts.EndSeq < stopSeq {
		stopSeq = r.opts.EndSeq
	}
	if stopSeq == 0 || r.opts.StartSeq > stopSeq {
		return nil
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: r.opts.Subjects, InactiveThreshold: time.Minute}
	switch {
	case r.opts.StartSeq != 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.opts.StartSeq
	case !r.opts.Since.IsZero():
		since := r.opts.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", name, err)
	}
	r.total = cons.CachedInfo().NumPending
	if r.total == 0 {
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	defer it.Stop()
	for {
		// Checked first: with messages buffered, Next could still return one
		// after a cancellation.
		if err := ctx.Err(); err != nil {
			return err
		}
		msg, err := r.next(ctx, it, cons)
		if err != nil || msg == nil {
			return err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("message metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq > stopSeq || (!r.opts.Until.IsZero() && meta.Timestamp.After(r.opts.Until)) {
			return nil
		}
		if err := r.pace(ctx, meta.Timestamp); err != nil {
			return err
		}
		if err := r.out.write(ctx, name, msg, meta); err != nil {
			return err
		}
		r.sum.Written++
		r.sum.LastSeq = seq
		if r.sum.FirstSeq == 0 {
			r.sum.FirstSeq = seq
		}
		if r.opts.Progress != nil {
			r.opts.Progress(Progress{Done: r.sum.Written, Total: r.total, LastSeq: seq, Elapsed: time.Since(r.began)})
		}
		// NumPending counts matching messages after this one as the server
		// delivered it: zero means there is nothing more to read now.
		if seq >= stopSeq || meta.NumPending == 0 {
			return nil
		}
	}
}

// next returns the next message, or nil when the consumer has nothing more
// pending after waiting IdleTimeout (messages removed during the replay).
func (r *reader) next(ctx context.Context, it jetstream.MessagesContext, cons jetstream.Consumer) (jetstream.Msg, error) {
	for {
		wait, cancel := context.WithTimeout(ctx, r.opts.IdleTimeout)
		msg, err := it.Next(jetstream.NextContext(wait))
		cancel()
		if err == nil {
			return msg, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("read message: %w", err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("consumer info: %w", err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return nil, nil
		}
	}
}

// pace waits until the message is due: its publish-time distance from the
// first message, divided by Speed, after the first message was written. A
// schedule from one origin does not drift the way summed per-gap sleeps do.
func (r *reader) pace(ctx context.Context, published time.Time) error {
	if r.opts.Speed == 0 {
		return nil
	}
	if r.wallOrigin.IsZero() {
		r.paceOrigin, r.wallOrigin = published, time.Now()
		return nil
	}
	offset := time.Duration(float64(published.Sub(r.paceOrigin)) / r.opts.Speed)
	wait := time.Until(r.wallOrigin.Add(offset))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// republisher sends replayed messages under a prefix.
type republisher struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	// viaJetStream is set when some stream captures the targets: then every
	// publish waits for its ack, so a replay into a sandbox stream is complete.
	viaJetStream bool
}

func newRepublisher(ctx context.Context, js jetstream.JetStream, prefix string, filters []string, kinds []subjects.Kind) (*republisher, error) {
	if len(kinds) == 0 {
		return nil, errors.New("replay: re-publishing needs the connector's kinds (Options.Kinds) to keep clear of live subjects")
	}
	live, err := liveSubjects(ctx, js, kinds)
	if err != nil {
		return nil, err
	}
	if err := checkPrefix(prefix, filters, live, kinds); err != nil {
		return nil, err
	}
	rp := &republisher{nc: js.Conn(), js: js, prefix: prefix}
	for _, f := range filters {
		target := prefix + "." + f
		lister := js.StreamNames(ctx, jetstream.WithStreamListSubject(target))
		for n := range lister.Name() {
			if _, isLive := live[n]; isLive {
				// The server knows a capture our patterns missed.
				return nil, refuse("re-publish target %q would be captured by stream %s", target, n)
			}
			rp.viaJetStream = true
		}
		if err := lister.Err(); err != nil {
			return nil, fmt.Errorf("streams capturing %q: %w", target, err)
		}
	}
	return rp, nil
}

// isControlHeader reports headers dropped from re-published copies.
// Nats-Msg-Id: the copy is a new message; with the original id, a stream
// capturing the target would silently drop it as a duplicate of an earlier
// replay within its duplicates window. The others instruct JetStream about the
// original publish (expected stream or sequence, rollup, per-message TTL) and
// would make the copy fail or purge the sandbox.
func isControlHeader(name string) bool {
	for _, c := range []string{"Nats-Msg-Id", "Nats-Rollup", "Nats-TTL"} {
		if strings.EqualFold(name, c) {
			return true
		}
	}
	return len(name) >= len("Nats-Expected-") && strings.EqualFold(name[:len("Nats-Expected-")], "Nats-Expected-")
}

func (rp *republisher) write(ctx context.Context, stream string, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	h := nats.Header{}
	for k, v := range msg.Headers() {
		if !isControlHeader(k) {
			h[k] = slices.Clone(v)
		}
	}
	h.Set(subjects.HeaderReplayStream, stream)
	h.Set(subjects.HeaderReplaySeq, strconv.FormatUint(meta.Sequence.Stream, 10))
	h.Set(subjects.HeaderReplayTime, meta.Timestamp.UTC().Format(time.RFC3339Nano))
	out := &nats.Msg{Subject: rp.prefix + "." + msg.Subject(), Header: h, Data: msg.Data()}
	if rp.viaJetStream {
		if _, err := rp.js.PublishMsg(ctx, out); err != nil {
			return fmt.Errorf("re-publish seq %d to %s: %w", meta.Sequence.Stream, out.Subject, err)
		}
		return nil
	}
	if err := rp.nc.PublishMsg(out); err != nil {
		return fmt.Errorf("re-publish seq %d to %s: %w", meta.Sequence.Stream, out.Subject, err)
	}
	return nil
}

func (rp *republisher) flush(ctx context.Context) error {
	if err := rp.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("flush re-published messages: %w", err)
	}
	return nil
}
