package connector

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// LaneSizes bounds the two queues of one session.
type LaneSizes struct {
	// High is the high-lane capacity; when full, Emit blocks the upstream reader.
	High int
	// Low is the low-lane capacity; when full, the oldest event is dropped.
	Low int
}

// DefaultPublishWindow is Options.Window's default, chosen by measurement
// (BenchmarkLowLanePublishing and the system benchmark: BENCHMARKS.md).
const DefaultPublishWindow = 4096

// Lane sizes used for zero LaneSizes fields.
const (
	DefaultHighLane = 1024
	DefaultLowLane  = 1024
)

// Host is what the runtime gives one source session: emitting events into the
// lanes, publishing status, state in KV, metrics and a logger. A source keeps
// its *Host from construction; everything on it is safe for concurrent use.
type Host struct {
	kind, name string
	owner      Owner        // set once, before the source opens
	fence      func() error // nil: no lease to check (see Fence)
	rt         *Runtime
	log        zerolog.Logger
	metrics    SessionMetrics

	high  *highQueue
	low   *lowQueue
	highM laneMetrics
	lowM  laneMetrics

	// Header values shared read-only by every message of this session.
	sourceHdr, sessionHdr []string
	epochHdr              []string // Connector-Epoch: set with owner, nil outside a fleet
	// idPrefix makes synthetic Nats-Msg-Ids unique per process run and per
	// start of the session.
	idPrefix string
	// subjectPrefix is "<kind>.<name>.": every subject of this session has it.
	subjectPrefix string

	singleLane bool

	// stopPublishing is the hard stop of the session's publishers, after its
	// drain deadline, and the end of its status writer.
	stopPublishing context.CancelFunc
	highDone       chan struct{} // closed when the high lane's publisher returned
	statusDone     chan struct{} // closed when the status writer returned

	statusMu   sync.Mutex
	lastStatus *statusRecord
	statusKV   chan []byte // latest-wins slot for the status bucket writer

	// lastEvent is when the last upstream event was accepted (Unix ns; 0: none yet).
	lastEvent atomic.Int64
	// types holds the label-bound connector_events_by_type_total counters.
	// Emit reads it without a lock; misses copy it under typesMu.
	types   atomic.Pointer[typeCounters]
	typesMu sync.Mutex
}

// MaxEventTypes bounds the distinct type labels of connector_events_by_type_total
// per session: upstream types are arbitrary strings, and every label value is
// a series kept forever. Types beyond it count as "other".
const MaxEventTypes = 64

// Type labels that are not upstream message types as such.
const (
	typeOther   = "other"   // beyond MaxEventTypes, or unusable as a label
	typeUntyped = "untyped" // an event emitted without a Type
)

// typeCounters is an immutable snapshot: Emit reads it without locking.
type typeCounters struct {
	byType map[string]prometheus.Counter
	other  prometheus.Counter // set once byType is full
}

// Kind returns the source kind this host serves.
func (h *Host) Kind() string { return h.kind }

// Name returns the session name this host serves.
func (h *Host) Name() string { return h.name }

// Log returns the session's logger (fields source and session set).
func (h *Host) Log() zerolog.Logger { return h.log }

// Metrics returns the series the source updates itself.
func (h *Host) Metrics() SessionMetrics { return h.metrics }

// Emit queues one event in its lane. On the high lane it blocks while the lane
// is full (backpressure to the caller, the upstream reader) and fails only when
// ctx ends or the connector shuts down. On the low lane it never blocks: a full
// lane drops its oldest event, counted in connector_lane_dropped_total.
func (h *Host) Emit(ctx context.Context, ev Event) error {
	if !strings.HasPrefix(ev.Subject, h.subjectPrefix) {
		return fmt.Errorf("emit %s: not a subject of %s", ev.Subject, strings.TrimSuffix(h.subjectPrefix, "."))
	}
	if ev.Received.IsZero() {
		ev.Received = time.Now()
	}
	if ev.Lane == LaneLow && !h.singleLane {
		if !h.low.put(queued{Event: ev}) {
			return fmt.Errorf("emit %s: %w", ev.Subject, errQueueClosed)
		}
		h.lowM.events.Inc()
		h.accepted(&ev)
		return nil
	}
	if err := h.high.put(ctx, queued{Event: ev}); err != nil {
		return fmt.Errorf("emit %s: %w", ev.Subject, err)
	}
	h.highM.events.Inc()
	h.accepted(&ev)
	// The put woke the high-lane publisher onto this goroutine's processor,
	// where it would wait until the emitter blocks or is preempted (up to a
	// 10 ms time slice): an upstream reader with frames buffered never
	// blocks, and under a telemetry flood every core is busy. Yield, so the
	// exit is on its way now (BENCHMARKS.md, issue 12).
	runtime.Gosched()
	return nil
}

// accepted counts an event by type and records when the last upstream event
// arrived. It runs for every event (100k+/s): one lock-free map read and two
// atomic writes.
func (h *Host) accepted(ev *Event) {
	h.typeCounter(ev.Type).Inc()
	// The connector's own records say nothing about the upstream's liveness.
	if ev.Type != "status" && ev.Type != "audit" {
		h.lastEvent.Store(ev.Received.UnixNano())
	}
}

// typeCounter returns the events-by-type counter of typ.
func (h *Host) typeCounter(typ string) prometheus.Counter {
	if tc := h.types.Load(); tc != nil {
		if c, ok := tc.byType[typ]; ok {
			return c
		}
		if tc.other != nil {
			return tc.other
		}
	}
	return h.addTypeCounter(typ)
}

// addTypeCounter binds the counter of a type not seen yet and publishes a new
// snapshot holding it; once MaxEventTypes are bound, new types share "other".
func (h *Host) addTypeCounter(typ string) prometheus.Counter {
	h.typesMu.Lock()
	defer h.typesMu.Unlock()
	old := h.types.Load()
	if old == nil {
		old = &typeCounters{}
	}
	if c, ok := old.byType[typ]; ok {
		return c
	}
	if old.other != nil {
		return old.other
	}
	vec := h.rt.opts.Metrics.eventTypes
	next := &typeCounters{byType: make(map[string]prometheus.Counter, len(old.byType)+1)}
	for k, c := range old.byType {
		next.byType[k] = c
	}
	label := typ
	switch {
	case typ == "":
		label = typeUntyped
	case len(typ) > 64 || !utf8.ValidString(typ):
		label = typeOther
	}
	var c prometheus.Counter
	if len(next.byType) >= MaxEventTypes {
		next.other = vec.WithLabelValues(h.kind, h.name, typeOther)
		c = next.other
	} else {
		c = vec.WithLabelValues(h.kind, h.name, label)
		next.byType[typ] = c
	}
	h.types.Store(next)
	return c
}

// Report publishes st as SetStatus does, for a source's lifecycle changes: it
// is never given up because the source is stopping (its last word is often
// "stopped"); it waits for lane space until the runtime closes the lane,
// whose drain bounds the shutdown. A status that cannot be published is
// logged.
func (h *Host) Report(st Status) {
	if err := h.SetStatus(context.Background(), st); err != nil {
		h.log.Error().Err(err).Str("state", st.State).Str("reason", st.Reason).Msg("could not publish status")
	}
}

// Fence reports whether the session may still write upstream: nil, or an
// error when this replica can no longer be sure it owns the session (its
// lease could not be confirmed in time; another replica may own it now).
// A source calls it in its writer before each write (or batch of writes)
// and, on an error, writes nothing and closes the connection: a process
// resumed after a pause must not write on its old connections. It is a
// clock comparison, cheap enough for every write.
func (h *Host) Fence() error {
	if h == nil || h.fence == nil { // nil: a source's unit test without a runtime
		return nil
	}
	return h.fence()
}

// statusRecord is the published status document: the session's Status with
// its source, session and time (schemas/connector/status.json).
type statusRecord struct {
	Source  string `json:"source"`
	Session string `json:"session"`
	Time    string `json:"time"`
	Owner
	Status
	// raw is the document as published.
	raw []byte
}

// SetStatus publishes a lifecycle event on <kind>.<name>.status (high lane) and
// records it, with the time, as the session's entry in the status KV bucket.
func (h *Host) SetStatus(ctx context.Context, st Status) error {
	now := time.Now()
	rec := &statusRecord{Source: h.kind, Session: h.name, Time: now.UTC().Format(time.RFC3339Nano), Owner: h.owner, Status: st}
	payload, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	rec.raw = payload
	h.statusMu.Lock()
	h.lastStatus = rec
	h.statusMu.Unlock()
	h.offerStatus(payload)
	return h.Emit(ctx, Event{
		Subject:         subjects.Status(h.kind, h.name),
		Lane:            LaneHigh,
		Payload:         payload,
		Type:            "status",
		UpstreamSession: st.UpstreamSession,
		Received:        now,
	})
}

// offerStatus replaces whatever status is still waiting for the KV writer:
// only the latest matters there (every status is also in the stream).
func (h *Host) offerStatus(payload []byte) {
	for {
		select {
		case h.statusKV <- payload:
			return
		default:
		}
		select {
		case <-h.statusKV:
		default:
		}
	}
}

// LastStatus returns the last status document exactly as published (nil
// before the first status).
func (h *Host) LastStatus() json.RawMessage {
	h.statusMu.Lock()
	defer h.statusMu.Unlock()
	if h.lastStatus == nil {
		return nil
	}
	return h.lastStatus.raw
}

// lastStatusRecord returns the last status (nil before the first).
func (h *Host) lastStatusRecord() *statusRecord {
	h.statusMu.Lock()
	defer h.statusMu.Unlock()
	return h.lastStatus
}

// State returns the session's view of a KV bucket: keys are scoped under
// <kind>.<name>. so sessions never see each other's entries.
func (h *Host) State(bucket string) *Store {
	return &Store{kv: h.rt.buckets[bucket], bucket: bucket, prefix: subjects.SessionKey(h.kind, h.name) + "."}
}

// message turns a queued event into a new NATS message stored in JetStream.
func (h *Host) message(it queued) *nats.Msg {
	if it.Lane == LaneLow {
		msg := &nats.Msg{Header: make(nats.Header, 2)}
		h.lowMessage(it, msg)
		return msg
	}
	seq := []string{strconv.FormatUint(it.seq, 10)}
	received := []string{it.Received.UTC().Format(time.RFC3339Nano)}
	hdr := make(nats.Header, 8)
	hdr[subjects.HeaderSource] = h.sourceHdr
	hdr[subjects.HeaderSession] = h.sessionHdr
	if it.Type != "" {
		hdr[subjects.HeaderType] = []string{it.Type}
	}
	hdr[subjects.HeaderReceived] = received
	if it.UpstreamSession != "" {
		hdr[subjects.HeaderUpstreamSession] = []string{it.UpstreamSession}
	}
	hdr[subjects.HeaderSeq] = seq
	if h.epochHdr != nil {
		hdr[subjects.HeaderEpoch] = h.epochHdr
	}
	id := it.MsgID
	if id == "" {
		// A synthetic id keeps retries of identity-less high-lane events idempotent.
		id = h.idPrefix + seq[0]
	}
	hdr[subjects.HeaderMsgID] = []string{id}
	return &nats.Msg{Subject: it.Subject, Data: it.Payload, Header: hdr}
}

// lowMessage writes a low-lane event into msg, reusing msg's header map and
// its value slices, so that the fast-batch sender, which copies each message
// into the connection's buffer before the next, builds every event in one
// message: five allocations fewer per event (BENCHMARKS.md, issue 12). Low-lane
// telemetry carries only Connector-Received and Connector-Seq (or
// Connector-Seq alone, LowLaneNoReceived): its subject already names source,
// session and type, and at 100k msgs/s every header byte costs the connector
// and the server measurably.
func (h *Host) lowMessage(it queued, msg *nats.Msg) {
	msg.Subject, msg.Data = it.Subject, it.Payload
	setHeader(msg.Header, subjects.HeaderSeq, strconv.FormatUint(it.seq, 10))
	if h.rt.opts.LowLaneNoReceived {
		delete(msg.Header, subjects.HeaderReceived)
		return
	}
	setHeader(msg.Header, subjects.HeaderReceived, it.Received.UTC().Format(time.RFC3339Nano))
}

// setHeader sets key to the one value v, in the value slice key already has
// when there is one.
func setHeader(hdr nats.Header, key, v string) {
	if vs := hdr[key]; cap(vs) > 0 {
		vs = vs[:1]
		vs[0] = v
		hdr[key] = vs
		return
	}
	hdr[key] = []string{v}
}

// flushStatus writes the session's last status to KV, at its stop.
func (h *Host) flushStatus() {
	// The last status, whatever the writer managed: its last Put may have
	// been cut short by the hard stop. Writing it again is harmless.
	last := h.LastStatus()
	if last == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := h.rt.buckets[subjects.BucketStatus].Put(ctx, subjects.StatusKey(h.kind, h.name), last); err != nil {
		h.log.Warn().Err(err).Msg("could not record the final status in KV")
	}
}

// writeStatus keeps the status bucket entry current; it runs until ctx ends.
func (h *Host) writeStatus(ctx context.Context) {
	key := subjects.StatusKey(h.kind, h.name)
	kv := h.rt.buckets[subjects.BucketStatus]
	for {
		select {
		case <-ctx.Done():
			return
		case payload := <-h.statusKV:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := kv.Put(pctx, key, payload); err != nil && ctx.Err() == nil {
				h.log.Warn().Err(err).Msg("could not record status in KV")
			}
			cancel()
		}
	}
}

// newHost builds the host of a starting session and starts its publishers
// and status writer. r.mu is held.
func (r *Runtime) newHost(spec Session) *Host {
	sizes := spec.Lanes
	if sizes.High <= 0 {
		sizes.High = DefaultHighLane
	}
	if sizes.Low <= 0 {
		sizes.Low = DefaultLowLane
	}
	kind, name, key := spec.Kind, spec.Name, spec.Key()
	log := r.opts.Log.With().Str("source", kind).Str("session", name).Logger()
	dropped := r.opts.Metrics.dropped.WithLabelValues(kind, name)
	var superseded func()
	if r.opts.LowLaneKeepLatest {
		superseded = r.opts.Metrics.superseded.WithLabelValues(kind, name).Inc
	}
	pubCtx, stop := context.WithCancel(r.pubCtx)
	h := &Host{
		kind: kind, name: name, rt: r, log: log,
		metrics:        r.opts.Metrics.session(kind, name),
		high:           newHighQueue(sizes.High),
		low:            newLowQueue(sizes.Low, dropped.Inc, superseded, r.pump.wake),
		highM:          r.opts.Metrics.lane(kind, name, LaneHigh),
		lowM:           r.opts.Metrics.lane(kind, name, LaneLow),
		sourceHdr:      []string{kind},
		sessionHdr:     []string{name},
		idPrefix:       key + "." + r.runID + "." + strconv.FormatUint(r.incarnations.Add(1), 10) + ".",
		subjectPrefix:  key + ".",
		statusKV:       make(chan []byte, 1),
		singleLane:     r.opts.SingleLane,
		stopPublishing: stop,
		highDone:       make(chan struct{}),
		statusDone:     make(chan struct{}),
	}
	high := &publisher{
		queue: h.high, window: r.highWindow, metrics: h.highM, conn: r.opts.HighConn,
		ackTimeout: r.opts.AckTimeout, build: h.message, log: log.With().Str("lane", "high").Logger(),
		yield: r.priority,
	}
	go func() {
		defer close(h.highDone)
		if err := high.run(pubCtx); err != nil {
			high.log.Error().Err(err).Msg("high-lane publisher could not start; its events are not published")
		}
	}()
	r.pump.add(h.subjectPrefix, &pumpLane{stream: r.lowStream(kind), queue: h.low, build: h.message, fill: h.lowMessage, metrics: h.lowM, log: log.With().Str("lane", "low").Logger()})
	go func() {
		defer close(h.statusDone)
		h.writeStatus(pubCtx)
	}()
	return h
}

// closeLanes closes both lanes (idempotent): Emit fails from now on, and the
// publishers finish what is queued.
func (h *Host) closeLanes() {
	h.high.close()
	h.low.close()
}

// releaseHost closes a stopped session's lanes and waits for its publishers
// to store what is queued, at most DrainTimeout; then it abandons the rest
// (each abandoned event is logged and counted as failed), stops the status
// writer and writes the last status to KV.
func (r *Runtime) releaseHost(h *Host) {
	h.closeLanes()
	lowDone := r.pump.remove(h.subjectPrefix)
	deadline := time.After(r.opts.DrainTimeout)
	select {
	case <-h.highDone:
	case <-deadline:
		h.log.Error().Dur("timeout_ms", r.opts.DrainTimeout).Msg("high lane did not drain in time; abandoning unpublished events")
		deadline = nil // the low lane gets no more time either
	}
	if deadline != nil {
		select {
		case <-lowDone:
		case <-deadline:
			// The shared pump keeps the closed lane until it is empty (or
			// abandons it at its own hard stop); nothing waits for it here.
			h.log.Error().Dur("timeout_ms", r.opts.DrainTimeout).Msg("low lane did not drain in time")
		}
	}
	h.stopPublishing()
	<-h.highDone
	<-h.statusDone
	h.flushStatus()
}
