package connector

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	// Kinds limits provisioning to the streams of these source kinds (all if empty).
	Kinds []string
	// Retention returns the retention of a stream; nil means DefaultRetention.
	Retention func(subjects.StreamSpec) Retention
	// KVReplicas is the replica count of the KV buckets.
	KVReplicas int
	// Window is the number of unacknowledged low-lane publishes (default 512).
	Window int
	// LowLinger is how long a small low-lane batch waits for more events before
	// it is published (default 1 ms; negative disables). It trades that much
	// telemetry latency for fewer wake-ups and socket writes.
	LowLinger time.Duration
	// HighWindow is the number of unacknowledged high-lane publishes (default 1:
	// each high-lane event is stored before the next is sent, so the stream keeps
	// the receive order even across a failed publish).
	HighWindow int
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
	// SingleLane sends low-lane events through the high lane (one FIFO, never
	// dropped). It exists to measure what the lanes buy; do not use it in production.
	SingleLane bool
	// Version is reported by the command services.
	Version string
	Metrics *Metrics
	Log     zerolog.Logger
}

// Runtime owns everything that is the same for every source: lanes, publishing,
// acks and retries, dedup ids, command services, KV state and metrics.
type Runtime struct {
	opts    Options
	highJS  jetstream.JetStream // administration and KV
	pump    *lowPump            // publishes every session's low lane
	buckets map[string]jetstream.KeyValue
	runID   string

	mu     sync.Mutex
	hosts  map[string]*Host
	closed bool // lanes closed: no new hosts

	// pubCtx outlives the sources: the lanes keep publishing while they drain.
	pubCtx         context.Context
	stopPublishing context.CancelFunc
	lanesDone      sync.WaitGroup
	statusDone     sync.WaitGroup

	serving     chan struct{} // closed once Run has registered the command services
	servingOnce sync.Once
	closeOnce   sync.Once

	cmdMu    sync.Mutex
	stopping bool           // new commands are refused with shutting_down
	commands sync.WaitGroup // commands in progress
	// handlers counts command callbacks running, refusals included: micro's
	// Stop drains its subscriptions in the background, and Run returns only
	// after the last callback (they audit into the lanes Close drains).
	handlersClosed bool // under cmdMu: callbacks from now on return at once
	handlers       sync.WaitGroup
}

// New connects the runtime to JetStream and provisions the streams and buckets.
func New(ctx context.Context, opts Options) (*Runtime, error) {
	if opts.HighConn == nil {
		return nil, errors.New("connector: a NATS connection is required")
	}
	if opts.LowConn == nil {
		opts.LowConn = opts.HighConn
	}
	if opts.Window <= 0 {
		opts.Window = 512
	}
	if opts.LowLinger == 0 {
		opts.LowLinger = time.Millisecond
	}
	if opts.HighWindow <= 0 {
		opts.HighWindow = 1
	}
	if opts.SingleLane {
		// One FIFO for everything: measure it with the telemetry window.
		opts.HighWindow = opts.Window
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
	buckets, err := Provision(ctx, highJS, subjects.Streams(opts.Kinds...), opts.Retention, subjects.Buckets(), opts.KVReplicas)
	if err != nil {
		return nil, err
	}
	pubCtx, stop := context.WithCancel(context.Background())
	r := &Runtime{
		opts: opts, highJS: highJS, buckets: buckets,
		hosts: map[string]*Host{}, runID: nuid.Next(), pubCtx: pubCtx, stopPublishing: stop,
		serving: make(chan struct{}),
	}
	r.pump = newLowPump(opts.LowConn, opts.Window, opts.AckTimeout, max(opts.LowLinger, 0), opts.Log.With().Str("lane", "low").Logger())
	r.lanesDone.Add(1)
	go func() {
		defer r.lanesDone.Done()
		if err := r.pump.run(pubCtx); err != nil {
			opts.Log.Error().Err(err).Msg("low-lane publisher could not start; telemetry is not published")
		}
	}()
	return r, nil
}

// JetStream returns the runtime's JetStream context (high-lane connection).
func (r *Runtime) JetStream() jetstream.JetStream { return r.highJS }

// NewHost creates the host of one source session and starts its publishers.
// Kind and name must be valid subject tokens.
func (r *Runtime) NewHost(kind, name string, sizes LaneSizes) (*Host, error) {
	if !subjects.ValidToken(kind) || !subjects.ValidToken(name) {
		return nil, fmt.Errorf("session %q of %q: names may not contain '.', '*', '>' or whitespace", name, kind)
	}
	if sizes.High <= 0 {
		sizes.High = DefaultHighLane
	}
	if sizes.Low <= 0 {
		sizes.Low = DefaultLowLane
	}
	key := kind + "." + name
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("session %s: the runtime is closed", key)
	}
	if _, dup := r.hosts[key]; dup {
		return nil, fmt.Errorf("session %s is configured twice", key)
	}
	log := r.opts.Log.With().Str("source", kind).Str("session", name).Logger()
	dropped := r.opts.Metrics.dropped.WithLabelValues(kind, name)
	h := &Host{
		kind: kind, name: name, rt: r, log: log,
		metrics:       r.opts.Metrics.session(kind, name),
		high:          newHighQueue(sizes.High),
		low:           newLowQueue(sizes.Low, dropped.Inc, r.pump.wake),
		highM:         r.opts.Metrics.lane(kind, name, LaneHigh),
		lowM:          r.opts.Metrics.lane(kind, name, LaneLow),
		sourceHdr:     []string{kind},
		sessionHdr:    []string{name},
		idPrefix:      kind + "." + name + "." + r.runID + ".",
		subjectPrefix: key + ".",
		statusKV:      make(chan []byte, 1),
		singleLane:    r.opts.SingleLane,
	}
	r.hosts[key] = h
	high := &publisher{
		queue: h.high, window: r.opts.HighWindow, metrics: h.highM, conn: r.opts.HighConn,
		ackTimeout: r.opts.AckTimeout, build: h.message, log: log.With().Str("lane", "high").Logger(),
	}
	r.lanesDone.Add(1)
	go func() {
		defer r.lanesDone.Done()
		if err := high.run(r.pubCtx); err != nil {
			high.log.Error().Err(err).Msg("high-lane publisher could not start; its events are not published")
		}
	}()
	r.pump.add(key+".", &pumpLane{queue: h.low, build: h.message, metrics: h.lowM, log: log.With().Str("lane", "low").Logger()})
	r.statusDone.Add(1)
	go func() {
		defer r.statusDone.Done()
		h.writeStatus(r.pubCtx)
	}()
	return h, nil
}

// Statuses returns every session's last status, keyed by <kind>.<name>.
func (r *Runtime) Statuses() map[string]map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]any, len(r.hosts))
	for k, h := range r.hosts {
		out[k] = h.LastStatus()
	}
	return out
}

// Serving is closed once Run has registered every command subject, so a
// request sent after it gets an answer.
func (r *Runtime) Serving() <-chan struct{} { return r.serving }

// Run serves the sources' commands and runs the sources until ctx ends, then
// shuts down in order: new commands are refused and those in progress finish
// (they may need their source), the sources stop, the command services stop,
// and the lanes drain into JetStream (bounded by DrainTimeout). A source that
// fails stops them all; its error is returned. Run may be called once.
func (r *Runtime) Run(ctx context.Context, sources ...Source) error {
	// Sources outlive ctx until the commands in progress are done.
	srcCtx, stopSources := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSources()
	failed := make(chan error, len(sources))

	stopServices, err := r.serveAll(srcCtx, sources)
	if err != nil {
		r.Close()
		return err
	}
	if err := r.opts.HighConn.FlushTimeout(5 * time.Second); err != nil {
		r.opts.Log.Warn().Err(err).Msg("command subscriptions not confirmed by the server yet")
	}
	r.servingOnce.Do(func() { close(r.serving) })

	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := src.Run(srcCtx); err != nil && srcCtx.Err() == nil {
				failed <- fmt.Errorf("%s %s: %w", src.Kind(), src.Name(), err)
			}
		}()
	}
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	r.refuseCommands()
	stopSources()
	sourcesDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(sourcesDone)
	}()
	select {
	case <-sourcesDone:
	case <-time.After(r.opts.DrainTimeout):
		// A source blocked on a full high lane (NATS down) cannot finish:
		// closing the lanes makes its Emit fail so it can return.
		r.opts.Log.Error().Dur("timeout", r.opts.DrainTimeout).Msg("sources did not stop in time; closing the lanes")
		r.closeLanes()
		<-sourcesDone
	}
	stopServices()
	r.waitHandlers()
	r.Close()
	return err
}

// refuseCommands makes new commands fail with shutting_down and waits for the
// ones in progress.
func (r *Runtime) refuseCommands() {
	r.cmdMu.Lock()
	r.stopping = true
	r.cmdMu.Unlock()
	r.commands.Wait()
}

// enterHandler registers a running command callback; false once the
// services have stopped (a late message drained by micro: no reply, the
// requester is told nothing by a process that is going away).
func (r *Runtime) enterHandler() bool {
	r.cmdMu.Lock()
	defer r.cmdMu.Unlock()
	if r.handlersClosed {
		return false
	}
	r.handlers.Add(1)
	return true
}

// waitHandlers waits for the command callbacks still running after the
// services stopped, at most CommandTimeout (each is bounded by it).
func (r *Runtime) waitHandlers() {
	r.cmdMu.Lock()
	r.handlersClosed = true
	r.cmdMu.Unlock()
	done := make(chan struct{})
	go func() {
		r.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(r.opts.CommandTimeout):
		r.opts.Log.Warn().Dur("timeout", r.opts.CommandTimeout).Msg("command callbacks still running after the services stopped")
	}
}

// beginCommand registers a command in progress; false once shutting down.
func (r *Runtime) beginCommand() bool {
	r.cmdMu.Lock()
	defer r.cmdMu.Unlock()
	if r.stopping {
		return false
	}
	r.commands.Add(1)
	return true
}

// Close drains the lanes and stops the publishers. Run calls it; call it
// yourself only when Run is never called (a start-up error after NewHost).
func (r *Runtime) Close() { r.closeOnce.Do(r.drain) }

// closeLanes closes every lane (idempotent): Emit fails from now on, and the
// publishers finish what is queued.
func (r *Runtime) closeLanes() []*Host {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	hosts := make([]*Host, 0, len(r.hosts))
	for _, h := range r.hosts {
		h.high.close()
		h.low.close()
		hosts = append(hosts, h)
	}
	r.pump.close()
	return hosts
}

// drain closes every lane and waits for the publishers to store what is queued,
// at most DrainTimeout; then it abandons the rest (each abandoned event is
// logged and counted as failed).
func (r *Runtime) drain() {
	hosts := r.closeLanes()
	lanes := make(chan struct{})
	go func() {
		r.lanesDone.Wait()
		close(lanes)
	}()
	select {
	case <-lanes:
	case <-time.After(r.opts.DrainTimeout):
		r.opts.Log.Error().Dur("timeout", r.opts.DrainTimeout).Msg("lanes did not drain in time; abandoning unpublished events")
	}
	r.stopPublishing()
	<-lanes
	r.statusDone.Wait()
	for _, h := range hosts {
		h.flushStatus()
	}
}
