package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// Options configure a Runtime.
type Options struct {
	// HighConn carries high-lane publishes and the command services; LowConn
	// carries low-lane publishes. Separate connections keep a telemetry burst
	// from queueing in front of an exit signal in one socket buffer. They may be
	// the same connection.
	HighConn, LowConn *nats.Conn
	// Kinds are the source kinds whose streams and buckets are provisioned,
	// and whose sessions the runtime may start.
	Kinds []subjects.Kind
	// Retention returns the retention of a stream; nil means DefaultRetention.
	Retention func(subjects.StreamSpec) Retention
	// KVReplicas is the replica count of the KV buckets.
	KVReplicas int
	// Window is the number of unacknowledged low-lane publishes (default
	// DefaultPublishWindow).
	Window int
	// LowLinger is how long a small low-lane batch waits for more events before
	// it is published (default 1 ms; negative disables). It trades that much
	// telemetry latency for fewer wake-ups and socket writes.
	LowLinger time.Duration
	// AckTimeout bounds the wait for one publish ack before it is retried (default 5 s).
	AckTimeout time.Duration
	// DrainTimeout bounds how long shutdown waits for queued events to be stored
	// (default 10 s).
	DrainTimeout time.Duration
	// CommandTimeout bounds one command's execution (default 10 s).
	CommandTimeout time.Duration
	// CommandMaxBytes refuses larger command requests with request_too_large
	// before the source sees them (default DefaultCommandMaxBytes, 64 KiB).
	CommandMaxBytes int
	// CommandRate is the sustained rate, in commands per second, that each
	// session accepts (a token bucket); beyond it commands are refused with
	// rate_limited before the source sees them (default DefaultCommandRate;
	// negative disables the limit).
	CommandRate float64
	// CommandBurst is the bucket size: commands accepted back to back before
	// the rate applies (default DefaultCommandBurst).
	CommandBurst int
	// QuietUnknownSessions leaves commands for sessions this process does not
	// serve unanswered (the requester times out) instead of refusing them with
	// unknown_session. Set it when several connector processes share one NATS
	// account with different sessions: see serveUnknown.
	QuietUnknownSessions bool
	// SessionOwner, in a fleet, tells a session of the shared configuration
	// (configured) that this process does not run from an unknown one, and
	// names the replica that holds its lease ("" while none does, or while
	// this replica holds it but does not run it yet or any more). A command
	// for a session held elsewhere is left to its owner, never refused here
	// (a refusal could reach the requester before the owner's reply); one
	// for a session nobody holds (a handover) is refused with not_owner
	// after OwnerGrace, unless an owner appeared meanwhile.
	SessionOwner func(kind, name string) (configured bool, owner string)
	// OwnerGrace is how long a replica waits before answering not_owner for
	// a session without an owner (default 100 ms): a new owner starting its
	// session answers first.
	OwnerGrace time.Duration
	// LowLanePerMessage publishes the low lanes one message at a time
	// (PublishMsgAsync) even when the server and every low-lane stream allow
	// fast batches (nats-server 2.14+, AllowBatchPublish, which provisioning
	// sets): the measured fallback, and the way back should batches misbehave.
	LowLanePerMessage bool
	// LowLaneNoReceived leaves Connector-Received off low-lane telemetry,
	// which then carries Connector-Seq alone: 37 bytes less per message for
	// the client and the server to move and store. JetStream's own
	// timestamp still says when each message was stored.
	LowLaneNoReceived bool
	// LowLaneKeepLatest makes a full low lane replace the queued event of a
	// new event's subject, when it has one, instead of dropping the oldest
	// (lane_latest.go): every low-lane event is a full snapshot of its
	// subject. The default drops the oldest, as DESIGN.md's contract says.
	LowLaneKeepLatest bool
	// SingleLane sends low-lane events through the high lane (one FIFO, never
	// dropped). It exists to measure what the lanes buy; do not use it in production.
	SingleLane bool
	// Version is reported by the command services.
	Version string
	Metrics *Metrics
	Log     zerolog.Logger
}

// Runtime owns everything that is the same for every source: lanes, publishing,
// acks and retries, dedup ids, command services, KV state and metrics. It
// starts and stops sessions one by one (Start, Stop) while the others run.
type Runtime struct {
	opts   Options
	highJS jetstream.JetStream // administration and KV
	pump   *lowPump            // publishes every session's low lane
	// priority is shared by the high-lane publishers and the pump, which
	// steps aside while an exit is on its way (priority.go).
	priority *priorityYield
	buckets  map[string]jetstream.KeyValue
	// asyncStreams are the streams in persist mode async, as found at start.
	asyncStreams []string
	runID        string
	// incarnations numbers the hosts this runtime built: a session started
	// again gets new synthetic Nats-Msg-Ids (its Connector-Seq starts over),
	// so JetStream never takes its events for the previous run's.
	incarnations atomic.Uint64
	// highWindow is 1: each high-lane event is stored before the next is
	// sent, so the stream keeps the receive order even across a failed
	// publish. Only the single-lane measurement mode (one FIFO for
	// everything) publishes it with the telemetry window.
	highWindow int

	mu       sync.Mutex
	sessions map[string]*running // by Session.Key, from Start until stopped
	kinds    map[string]func()   // the unknown-command subscription of each kind served, by kind
	closed   bool                // no new sessions
	closing  chan struct{}       // closed when closed is set
	stopping bool                // shutdown began: requests for no session are refused with shutting_down

	// failed carries the first error of a source whose Run failed: Run
	// stops everything and returns it.
	failed chan error

	// pubCtx outlives the sources: the lanes keep publishing while they drain.
	pubCtx         context.Context
	stopPublishing context.CancelFunc
	pumpDone       chan struct{}

	serving     chan struct{} // closed once Run has started every session it was given
	servingOnce sync.Once
	closeOnce   sync.Once

	// handlers counts the unknown-command callbacks running: the
	// subscriptions stop in the background, and Run returns only after the
	// last callback (they audit into lanes that Close drains).
	handlersMu     sync.Mutex
	handlersClosed bool
	handlers       sync.WaitGroup
}

// New connects the runtime to JetStream and provisions the streams and buckets
// of Options.Kinds.
func New(ctx context.Context, opts Options) (*Runtime, error) {
	if opts.HighConn == nil {
		return nil, errors.New("connector: a NATS connection is required")
	}
	if opts.LowConn == nil {
		opts.LowConn = opts.HighConn
	}
	if opts.Window <= 0 {
		opts.Window = DefaultPublishWindow
	}
	if opts.LowLinger == 0 {
		opts.LowLinger = time.Millisecond
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 5 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = 10 * time.Second
	}
	if opts.OwnerGrace <= 0 {
		opts.OwnerGrace = 100 * time.Millisecond
	}
	if opts.CommandMaxBytes <= 0 {
		opts.CommandMaxBytes = DefaultCommandMaxBytes
	}
	if opts.CommandRate == 0 {
		opts.CommandRate = DefaultCommandRate
	}
	if opts.CommandBurst <= 0 {
		opts.CommandBurst = DefaultCommandBurst
	}
	if opts.Retention == nil {
		opts.Retention = DefaultRetention
	}
	if opts.Metrics == nil {
		return nil, errors.New("connector: metrics are required")
	}
	if opts.Version == "" {
		opts.Version = "0.1.0"
	}
	highJS, err := jetstream.New(opts.HighConn)
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	prov, err := Provision(ctx, highJS, subjects.Streams(opts.Kinds...), opts.Retention, subjects.Buckets(opts.Kinds...), opts.KVReplicas)
	if err != nil {
		return nil, err
	}
	if len(prov.AsyncPersist) > 0 {
		opts.Log.Info().Strs("streams", prov.AsyncPersist).Msg("streams acknowledge before their file write (persist mode async): a nats-server crash loses their last milliseconds")
	}
	for _, m := range prov.PersistMismatches {
		opts.Log.Warn().Str("stream", m.Stream).Str("persist_mode", PersistName(m.Have)).Str("configured", PersistName(m.Want)).Msg(m.String())
	}
	pubCtx, stop := context.WithCancel(context.Background())
	r := &Runtime{
		opts: opts, highJS: highJS, buckets: prov.Buckets, asyncStreams: prov.AsyncPersist,
		sessions: map[string]*running{}, kinds: map[string]func(){}, failed: make(chan error, 1), closing: make(chan struct{}),
		runID: nuid.Next(), highWindow: 1, pubCtx: pubCtx, stopPublishing: stop, pumpDone: make(chan struct{}),
		serving: make(chan struct{}),
	}
	if opts.SingleLane {
		r.highWindow = opts.Window
	}
	fastBatch, why := false, "per-message publishing was configured"
	if !opts.LowLanePerMessage {
		fastBatch, why = lowLaneBatchable(ctx, highJS, opts.Kinds)
	}
	mode := &modeReport{mode: LowLaneFastBatch}
	if fastBatch {
		opts.Log.Info().Msg("low lanes publish in fast batches (one flow ack per many events)")
	} else {
		mode = &modeReport{mode: LowLanePerMessage, why: why}
		opts.Log.Info().Str("why", why).Msg("low lanes publish one message at a time")
	}
	r.priority = newPriorityYield()
	r.pump = newLowPump(opts.LowConn, mode, yielder{y: r.priority}, opts.Window, opts.AckTimeout, max(opts.LowLinger, 0), opts.Log.With().Str("lane", "low").Logger())
	go func() {
		defer close(r.pumpDone)
		if err := r.pump.run(pubCtx); err != nil {
			opts.Log.Error().Err(err).Msg("low-lane publisher could not start; telemetry is not published")
		}
	}()
	if opts.SessionOwner != nil {
		// In a fleet, a replica answers for the sessions of the shared
		// configuration from the start, also before it runs any of them: a
		// request during a handover then reaches a replica that knows who
		// owns the session (or that nobody does: not_owner).
		for _, k := range opts.Kinds {
			if err := r.serveKind(ctx, k.Name); err != nil {
				r.Close()
				return nil, err
			}
		}
	}
	return r, nil
}

// lowStream names the stream that captures kind's low-lane subjects ("" when
// the kind declares none).
func (r *Runtime) lowStream(kind string) string {
	for _, k := range r.opts.Kinds {
		if k.Name != kind {
			continue
		}
		for _, spec := range k.Streams {
			if spec.Lane == LaneLow {
				return spec.Name
			}
		}
	}
	return ""
}

// LowLanePublishing says how the low lanes publish (LowLaneFastBatch or
// LowLanePerMessage) and, for the latter, why.
func (r *Runtime) LowLanePublishing() (mode, why string) { return r.pump.mode.get() }

// AsyncPersistStreams names the streams that were in persist mode async on
// the server at start (STREAM_<NAME>_PERSIST_MODE).
func (r *Runtime) AsyncPersistStreams() []string { return slices.Clone(r.asyncStreams) }

// JetStream returns the runtime's JetStream context (high-lane connection).
func (r *Runtime) JetStream() jetstream.JetStream { return r.highJS }

// Serving is closed once Run has started every session it was given, so a
// request sent after it gets an answer.
func (r *Runtime) Serving() <-chan struct{} { return r.serving }

// Run starts the given sessions, serves until ctx ends or a session's source
// fails, then shuts down: every session still running (whoever started it)
// is stopped as Stop does, in parallel, and the lanes drain into JetStream
// (each step bounded by DrainTimeout). A failing source's error is returned.
// Run may be called once; Start and Stop may be called while it runs.
func (r *Runtime) Run(ctx context.Context, sessions ...Session) error {
	var err error
	for _, s := range sessions {
		if err = r.Start(ctx, s); err != nil {
			break
		}
	}
	if err == nil {
		r.servingOnce.Do(func() { close(r.serving) })
		select {
		case <-ctx.Done():
		case err = <-r.failed:
		}
	}
	r.shutdown()
	return err
}

// shutdown stops every session, the kinds' subscriptions and the publishers.
func (r *Runtime) shutdown() {
	r.mu.Lock()
	r.markClosed()
	all := make([]*running, 0, len(r.sessions))
	for _, s := range r.sessions {
		all = append(all, s)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() { r.stopSession(s) })
	}
	wg.Wait()
	r.Close()
}

// markClosed refuses new sessions and tells Closing's readers. r.mu is held.
func (r *Runtime) markClosed() {
	if !r.closed {
		close(r.closing)
	}
	r.closed, r.stopping = true, true
}

// Closing is closed once the runtime shuts down (Run ends, Close): no
// session can be started any more.
func (r *Runtime) Closing() <-chan struct{} { return r.closing }

// fail reports a source that stopped with an error; the first one ends Run.
func (r *Runtime) fail(err error) {
	select {
	case r.failed <- err:
	default:
	}
}

// enterHandler registers a running unknown-command callback; false once the
// subscriptions have stopped (a late message drained by the client: no
// reply, the requester is told nothing by a process that is going away).
func (r *Runtime) enterHandler() bool {
	r.handlersMu.Lock()
	defer r.handlersMu.Unlock()
	if r.handlersClosed {
		return false
	}
	r.handlers.Add(1)
	return true
}

// waitHandlers waits for the callbacks still running after the subscriptions
// stopped, at most CommandTimeout (each is bounded by it).
func (r *Runtime) waitHandlers() {
	r.handlersMu.Lock()
	r.handlersClosed = true
	r.handlersMu.Unlock()
	if !waitTimeout(&r.handlers, r.opts.CommandTimeout) {
		r.opts.Log.Warn().Dur("timeout_ms", r.opts.CommandTimeout).Msg("command callbacks still running after the services stopped")
	}
}

// Close stops every session still running, the kinds' subscriptions and the
// publishers. Run calls it; call it yourself only when Run is never called.
// It is idempotent.
func (r *Runtime) Close() {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.markClosed()
		left := make([]*running, 0, len(r.sessions))
		for _, s := range r.sessions {
			left = append(left, s)
		}
		kinds := r.kinds
		r.kinds = map[string]func(){}
		r.mu.Unlock()
		var wg sync.WaitGroup
		for _, s := range left {
			wg.Go(func() { r.stopSession(s) })
		}
		wg.Wait()
		for _, stop := range kinds {
			stop()
		}
		r.waitHandlers()
		r.pump.close()
		select {
		case <-r.pumpDone:
		case <-time.After(r.opts.DrainTimeout):
			r.opts.Log.Error().Dur("timeout_ms", r.opts.DrainTimeout).Msg("low lanes did not drain in time; abandoning unpublished events")
		}
		r.stopPublishing()
		<-r.pumpDone
	})
}

// waitTimeout waits for wg at most d; false when d passed first.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
