package openstream

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/openstream/ndjson"
	"github.com/jetbridge/connector/subjects"
)

// A session is one TCP connection to the controller: one reader goroutine that
// never stops while connected, one writer goroutine with a priority queue, and
// the commands waiting for their answer. Its owner (conn.runSession) drives
// the protocol and tears it down.
type session struct {
	c        *conn
	nc       net.Conn
	lines    *ndjson.Reader
	id       string // Connector-Upstream-Session: <conn id>#<n>
	opened   time.Time
	ctx      context.Context // ends at teardown; the writer stops with it (the reader's Emit does not)
	cancel   context.CancelFunc
	ctrlQ    chan outMsg // CONTROL: written ahead of everything else waiting
	normQ    chan outMsg
	readDone chan struct{}
	wrDone   chan struct{}
	held     []outMsg // writer only: a normal line that lost the race to a CONTROL

	endOnce   sync.Once
	ended     chan struct{} // closed by the first end()
	endReason string
	endCode   string // reason code of endReason (connector.ReasonStopped, reasonWatchdog, ...) that sessionEnd.reasonCode reports

	mu       sync.Mutex
	pend     []*pending    // handshake / monitor / stop, oldest first
	ctrlWait []*ctrlWaiter // CONTROL requests inside their control_err window
	closed   bool

	lastData  atomic.Int64 // unix nanos of the last data line
	lastCmd   atomic.Int64 // unix nanos of the last meaningful command written
	gotData   atomic.Bool
	firstAt   atomic.Int64  // unix nanos of the first data line
	firstData chan struct{} // closed at the first data line

	// Stall accounting. While the reader waits in Emit (high lane full: NATS
	// slow) it reads nothing, so that time is not silence from the
	// controller. The reader alone writes these.
	emitSince atomic.Int64 // unix nanos at which the current Emit began; 0 = none
	blocked   atomic.Int64 // total nanos spent in Emit
	stallRef  atomic.Int64 // lastData moved on by the time spent in Emits since; 0 = no data yet
}

// outMsg is one encoded line for the writer.
type outMsg struct {
	line []byte
	// meaningful commands refresh the controller's watchdog (keepalive clock).
	meaningful bool
	// sending, if set, is called just before the line is written.
	sending func()
	// written, if set (capacity 1), receives the write's outcome.
	written chan error
}

type pendingKind uint8

const (
	pendHandshake pendingKind = iota
	pendMonitor
	pendStop
)

func (k pendingKind) String() string {
	switch k {
	case pendHandshake:
		return cmdHandshake
	case pendMonitor:
		return cmdMonitor
	default:
		return cmdStop
	}
}

// pending is a command waiting for its ack or error.
type pending struct {
	kind    pendingKind
	target  string // STOP target
	version uint64 // MONITOR recipe version
	// keepalive: sent only to refresh the watchdog; its expected answer is
	// consumed here instead of being published every few seconds.
	keepalive bool
	sentAt    time.Time
	blockedAt int64        // s.blocked at sentAt: reader time in Emit is not the controller's delay
	done      chan outcome // capacity 1
}

// outcome is the answer to one command.
type outcome struct {
	err    *connector.CommandError // the controller's error; nil = acknowledged
	line   []byte                  // the answering line
	closed bool                    // the session ended without an answer
}

type ctrlWaiter struct {
	sentAt time.Time
	sent   bool
	done   chan outcome // capacity 1
}

var errSessionClosed = errors.New("connection closed")

func newSession(c *conn, nc net.Conn, n int) *session {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{
		c: c, nc: nc, id: fmt.Sprintf("%s#%d", c.id, n), opened: time.Now(),
		lines:     ndjson.NewReader(socketReader(nc, c.r.common.ReadCoalesce), c.r.common.MaxLine),
		ctx:       ctx,
		cancel:    cancel,
		ctrlQ:     make(chan outMsg, c.r.common.ControlQueue),
		normQ:     make(chan outMsg, 64),
		readDone:  make(chan struct{}),
		wrDone:    make(chan struct{}),
		ended:     make(chan struct{}),
		firstData: make(chan struct{}),
	}
}

func (s *session) start() {
	go s.read()
	go s.write()
}

// end records why the session is over (first reason wins, code one of the
// reason codes) and wakes its owner.
func (s *session) end(code, reason string) {
	s.endOnce.Do(func() {
		s.endReason, s.endCode = reason, code
		close(s.ended)
	})
}

// close stops both goroutines, waits for them and fails every waiter.
func (s *session) close() {
	s.end(connector.ReasonStopped, "closed")
	s.cancel()
	_ = s.nc.Close()
	<-s.readDone
	<-s.wrDone
	s.mu.Lock()
	s.closed = true
	pend, cw := s.pend, s.ctrlWait
	s.pend, s.ctrlWait = nil, nil
	s.mu.Unlock()
	for _, p := range pend {
		p.done <- outcome{closed: true}
	}
	for _, w := range cw {
		w.done <- outcome{closed: true}
	}
}

// --- writing ---

// enqueue hands a line to the writer; it blocks only while the queue is full.
func (s *session) enqueue(ctx context.Context, q chan outMsg, m outMsg) error {
	select {
	case q <- m:
		return nil
	default:
	}
	select {
	case q <- m:
		return nil
	case <-s.ended:
		return errSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// request registers a waiter for the answer to a command and queues it.
func (s *session) request(ctx context.Context, kind pendingKind, target string, version uint64, line []byte) (*pending, error) {
	return s.send(ctx, &pending{kind: kind, target: target, version: version}, line)
}

// send registers p and queues its line.
func (s *session) send(ctx context.Context, p *pending, line []byte) (*pending, error) {
	kind, target := p.kind, p.target
	p.sentAt, p.blockedAt, p.done = time.Now(), s.blocked.Load(), make(chan outcome, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errSessionClosed
	}
	// Registered before the write, so an answer can never arrive unmatched.
	s.pend = append(s.pend, p)
	s.mu.Unlock()
	if err := s.enqueue(ctx, s.normQ, outMsg{line: line, meaningful: kind != pendStop || target != targetSession}); err != nil {
		s.forget(p)
		return nil, err
	}
	return p, nil
}

// forget drops a pending command whose answer nobody waits for any more.
func (s *session) forget(p *pending) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pend = slices.DeleteFunc(s.pend, func(q *pending) bool { return q == p })
}

// overdueKeepalive reports whether a keepalive has waited longer than limit
// for its answer. Time the reader spent waiting in Emit (NATS backpressure)
// is not the controller's delay: it is not counted, and nothing is overdue
// while the reader waits there.
func (s *session) overdueKeepalive(now time.Time, limit time.Duration) bool {
	if s.emitSince.Load() != 0 {
		return false
	}
	blocked := s.blocked.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pend {
		if p.keepalive && now.Sub(p.sentAt)-time.Duration(blocked-p.blockedAt) > limit {
			return true
		}
	}
	return false
}

// control queues a CONTROL line ahead of everything else waiting. With a
// waiter, a control_err (or a CONTROL error) arriving while it is registered
// is delivered to it.
func (s *session) control(ctx context.Context, line []byte, w *ctrlWaiter, written chan error) error {
	m := outMsg{line: line, meaningful: true, written: written}
	if w != nil {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return errSessionClosed
		}
		s.ctrlWait = append(s.ctrlWait, w)
		s.mu.Unlock()
		m.sending = func() {
			s.mu.Lock()
			w.sent, w.sentAt = true, time.Now()
			s.mu.Unlock()
		}
	}
	if err := s.enqueue(ctx, s.ctrlQ, m); err != nil {
		if w != nil {
			s.forgetCtrl(w)
		}
		return err
	}
	return nil
}

func (s *session) forgetCtrl(w *ctrlWaiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctrlWait = slices.DeleteFunc(s.ctrlWait, func(q *ctrlWaiter) bool { return q == w })
}

// next returns the next line to write: CONTROL first.
func (s *session) next(block bool) (outMsg, bool) {
	select {
	case m := <-s.ctrlQ:
		return m, true
	default:
	}
	if !block {
		select {
		case m := <-s.normQ:
			return m, true
		default:
			return outMsg{}, false
		}
	}
	select {
	case m := <-s.ctrlQ:
		return m, true
	case m := <-s.normQ:
		// Both may have become ready together: CONTROL still goes first.
		select {
		case c := <-s.ctrlQ:
			s.requeueFront(m)
			return c, true
		default:
		}
		return m, true
	case <-s.ctx.Done():
		return outMsg{}, false
	}
}

// requeueFront keeps a normal line that lost the race to a CONTROL; the writer
// is the only consumer, so holding it in a one-slot buffer keeps the order.
func (s *session) requeueFront(m outMsg) { s.held = append(s.held, m) }

// write is the writer goroutine: it batches what is queued into one flush,
// CONTROL lines first, and ends the session on a write error.
func (s *session) write() {
	defer close(s.wrDone)
	bw := bufio.NewWriterSize(s.nc, 32<<10)
	var batch []outMsg
	for {
		batch = batch[:0]
		m, ok := s.take(true)
		if !ok {
			return
		}
		batch = append(batch, m)
		for len(batch) < 64 {
			m, ok := s.take(false)
			if !ok {
				break
			}
			batch = append(batch, m)
		}
		if err := s.c.r.host.Fence(); err != nil {
			// A process resumed after a pause: the robot may be another
			// replica's by now, so this batch (a CONTROL slice included)
			// is not written, and the connection ends.
			for _, m := range batch {
				if m.written != nil {
					m.written <- err
				}
			}
			s.end(connector.ReasonFenced, err.Error())
			return
		}
		meaningful := false
		for _, m := range batch {
			if m.sending != nil {
				m.sending()
			}
			_, _ = bw.Write(m.line)
			meaningful = meaningful || m.meaningful
		}
		_ = s.nc.SetWriteDeadline(time.Now().Add(s.c.r.common.WriteTimeout))
		err := bw.Flush()
		if err == nil && meaningful {
			s.lastCmd.Store(time.Now().UnixNano())
		}
		for _, m := range batch {
			if m.written != nil {
				m.written <- err
			}
		}
		if err != nil {
			s.end(connector.WriteEndReason(err), "write: "+err.Error())
			return
		}
	}
}

// take returns held lines before the queues.
func (s *session) take(block bool) (outMsg, bool) {
	// A CONTROL that arrived meanwhile still overtakes a held normal line.
	if len(s.held) > 0 {
		select {
		case c := <-s.ctrlQ:
			return c, true
		default:
		}
		m := s.held[0]
		s.held = s.held[1:]
		return m, true
	}
	return s.next(block)
}

// --- reading ---

// read is the reader goroutine: it runs for the whole connection, whatever
// the rest of the session does, and routes every line.
func (s *session) read() {
	defer close(s.readDone)
	for {
		line, err := s.lines.Next()
		now := time.Now()
		var (
			tooLong *ndjson.LineTooLongError
			partial *ndjson.PartialLineError
		)
		switch {
		case err == nil:
			s.route(line, now)
		case errors.As(err, &tooLong):
			// The reader skips to the next newline; only the line's start is kept.
			s.malformed(tooLong.Prefix, now, fmt.Sprintf("line longer than %d bytes (%d+), resynchronized at the next newline", s.lines.MaxLine(), tooLong.Len))
		case errors.As(err, &partial):
			// The server closed mid-line: keep what it sent, for diagnosis.
			s.malformed(partial.Line, now, "connection closed inside a line")
		case errors.Is(err, io.EOF):
			s.end(connector.ReasonClosedByPeer, "eof")
			return
		case errors.Is(err, net.ErrClosed):
			s.end(connector.ReasonStopped, "read: "+err.Error()) // our teardown closed the socket
			return
		default:
			s.end(connector.ReasonClosedByPeer, "read: "+err.Error())
			return
		}
	}
}

// route dispatches one line by type, or by the presence of error.
func (s *session) route(line []byte, at time.Time) {
	info, ok := scanLine(line)
	if !ok {
		s.malformed(line, at, "not a JSON object")
		return
	}
	if info.hasType && info.typ == evData {
		s.onData(line, at)
		return
	}
	typ := evUnknown
	switch {
	case info.hasType:
		if info.typ != "" {
			// A safe token: it is the subject's last token and the
			// Connector-Type header (known types are tokens already).
			typ = subjects.Token(info.typ)
		}
	case info.hasErr:
		typ = evError
	}
	payload := clone(line)
	var answered *pending
	switch typ {
	case evHandshakeAck:
		var o outcome
		o.line = payload
		if info.notOK {
			// A missing "ok" is accepted: only an explicit refusal counts.
			o.err = connector.Refuse("handshake_rejected", "handshake_ack with ok other than true: %s", payload)
		}
		answered = s.resolve(func(p *pending) bool { return p.kind == pendHandshake }, o)
	case evMonitorAck:
		answered = s.resolve(func(p *pending) bool { return p.kind == pendMonitor }, outcome{line: payload})
	case evStopAck:
		o := outcome{line: payload}
		if answered = s.resolve(func(p *pending) bool { return p.kind == pendStop && p.target == info.target }, o); answered == nil {
			answered = s.resolve(func(p *pending) bool { return p.kind == pendStop }, o)
		}
	case evControlErr:
		s.resolveControl(outcome{line: payload, err: controlErr(payload)})
	case evError:
		answered = s.onError(info.err, payload)
	}
	if answered != nil && answered.keepalive && expectedKeepaliveAnswer(answered, typ, info.err) {
		return
	}
	s.emit(connector.Event{
		Subject: subjects.OpenStreamEvent(s.c.r.cfg.Name, typ), Lane: connector.LaneHigh,
		Payload: payload, Type: typ, UpstreamSession: s.id, Received: at,
	})
}

// expectedKeepaliveAnswer: a keepalive STOP of an inactive target answers
// nothing_to_stop (or stop_ack: some controllers acknowledge a STOP of
// nothing), a re-sent MONITOR answers monitor_ack. Anything else is news
// and is published.
func expectedKeepaliveAnswer(p *pending, typ, code string) bool {
	switch p.kind {
	case pendStop:
		return typ == evError && code == "nothing_to_stop" || typ == evStopAck
	case pendMonitor:
		return typ == evMonitorAck
	}
	return false
}

func (s *session) onData(line []byte, at time.Time) {
	s.lastData.Store(at.UnixNano())
	s.stallRef.Store(at.UnixNano())
	if !s.gotData.Swap(true) {
		s.firstAt.Store(at.UnixNano())
		close(s.firstData)
	}
	subject, lane := s.c.dataSubject, connector.LaneLow
	if subject == "" {
		// Data on the control connection is not expected; keep it anyway.
		subject, lane = subjects.OpenStreamEvent(s.c.r.cfg.Name, evData), connector.LaneHigh
	}
	s.emit(connector.Event{
		Subject: subject, Lane: lane, Payload: clone(line), Type: evData,
		UpstreamSession: s.id, Received: at,
	})
}

// onError matches a line without type to the oldest pending command it can
// plausibly answer, and ends the session on codes that need a reconnect.
func (s *session) onError(code string, payload []byte) (answered *pending) {
	var e serverError
	_ = json.Unmarshal(payload, &e)
	msg := e.Message
	if e.Hint != "" {
		msg += " (hint: " + e.Hint + ")"
	}
	if msg == "" {
		msg = "the controller answered " + code
	}
	o := outcome{line: payload, err: &connector.CommandError{Code: code, Message: msg}}
	if kinds := errorTargets(code); kinds != 0 {
		answered = s.resolveOldest(kinds, o)
	}
	switch code {
	case "session_timeout":
		s.end(reasonWatchdog, code)
	case "stop_failed", "handshake_required":
		s.end(connector.ReasonProtocol, code)
	}
	return answered
}

// errorTargets says which pending commands an error code can answer.
type targetMask uint8

const (
	forHandshake targetMask = 1 << iota
	forMonitor
	forStop
	forControl
	forAny = forHandshake | forMonitor | forStop | forControl
)

func errorTargets(code string) targetMask {
	switch code {
	case "missing_major", "invalid_major_type", "invalid_version", "version_mismatch",
		"handshake_rejected", "busy_session_active":
		return forHandshake
	case "missing_period_ms", "invalid_period", "monitor_already_active", "monitor_internal_error":
		return forMonitor
	case "missing_url", "invalid_url", "url_too_long", "missing_method", "invalid_method", "invalid_args":
		return forMonitor | forControl
	case "control_err", "method_not_allowed", "control_busy", "invalid_body":
		return forControl
	case "missing_target", "invalid_target", "nothing_to_stop", "stop_failed":
		return forStop
	case "invalid_cmd", "invalid_payload", "missing_field", "invalid_type", "invalid_value", "handshake_required":
		return forAny
	}
	// session_timeout, rx_buf_overflow, invalid_ndjson and unknown codes answer no command.
	return 0
}

func (m targetMask) has(k pendingKind) bool {
	switch k {
	case pendHandshake:
		return m&forHandshake != 0
	case pendMonitor:
		return m&forMonitor != 0
	default:
		return m&forStop != 0
	}
}

// resolve answers the oldest pending command accepted by match.
func (s *session) resolve(match func(*pending) bool, o outcome) *pending {
	s.mu.Lock()
	var p *pending
	if i := slices.IndexFunc(s.pend, match); i >= 0 {
		p = s.pend[i]
		s.pend = slices.Delete(s.pend, i, i+1)
	}
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.done <- o
	if p.kind == pendMonitor {
		s.c.monitorAnswered(p.version, o)
	}
	return p
}

// resolveOldest answers the oldest command (pending or CONTROL in its window)
// that an error with targets m can belong to.
func (s *session) resolveOldest(m targetMask, o outcome) *pending {
	s.mu.Lock()
	var (
		p  *pending
		pi = slices.IndexFunc(s.pend, func(q *pending) bool { return m.has(q.kind) })
		w  *ctrlWaiter
		wi = -1
	)
	if pi >= 0 {
		p = s.pend[pi]
	}
	if m&forControl != 0 {
		if wi = slices.IndexFunc(s.ctrlWait, func(q *ctrlWaiter) bool { return q.sent }); wi >= 0 {
			w = s.ctrlWait[wi]
		}
	}
	if p != nil && w != nil {
		if w.sentAt.Before(p.sentAt) {
			p = nil
		} else {
			w = nil
		}
	}
	if p != nil {
		s.pend = slices.Delete(s.pend, pi, pi+1)
	}
	if w != nil {
		s.ctrlWait = slices.Delete(s.ctrlWait, wi, wi+1)
	}
	s.mu.Unlock()
	if p != nil {
		p.done <- o
		if p.kind == pendMonitor {
			s.c.monitorAnswered(p.version, o)
		}
	}
	if w != nil {
		w.done <- o
	}
	return p
}

// resolveControl gives a control_err to the oldest CONTROL still in its window.
func (s *session) resolveControl(o outcome) {
	s.mu.Lock()
	var w *ctrlWaiter
	if i := slices.IndexFunc(s.ctrlWait, func(q *ctrlWaiter) bool { return q.sent }); i >= 0 {
		w = s.ctrlWait[i]
		s.ctrlWait = slices.Delete(s.ctrlWait, i, i+1)
	}
	s.mu.Unlock()
	if w != nil {
		w.done <- o
	}
}

func controlErr(payload []byte) *connector.CommandError {
	var e struct {
		Status int             `json:"status"`
		Body   json.RawMessage `json:"body"`
	}
	_ = json.Unmarshal(payload, &e)
	return connector.Refuse(evControlErr, "the controller's REST call failed with status %d: %s", e.Status, e.Body)
}

// malformed publishes a line that is not one JSON object, raw bytes kept.
func (s *session) malformed(line []byte, at time.Time, why string) {
	r := s.c.r
	r.host.Metrics().Malformed.Inc()
	r.malformedLog.Warn().Str("conn", s.c.id).Int("bytes", len(line)).Str("why", why).Msg("malformed line from the controller")
	s.emit(connector.Event{
		Subject: subjects.Malformed(subjects.KindOpenStream, r.cfg.Name), Lane: connector.LaneHigh,
		Payload: clone(line), Type: "malformed", UpstreamSession: s.id, Received: at,
	})
}

// emit queues one upstream line. It uses the robot's emit context, not the
// session's: a line that was read is not lost because its session is being
// torn down (stall, EOF, reconnect) while the high lane is full; the reader
// waits, and teardown waits for the reader. Every failure is logged.
func (s *session) emit(ev connector.Event) {
	// Only the high lane blocks (and the low lane too in the core's
	// single-lane mode); the bookkeeping is cheap enough to do for both.
	start := time.Now()
	s.emitSince.Store(start.UnixNano())
	err := s.c.r.host.Emit(s.c.emitCtx, ev)
	d := int64(time.Since(start))
	// Credit the wait before clearing emitSince: stallIdle reads emitSince
	// first, so it sees the wait either as ongoing or as credited.
	s.blocked.Add(d)
	if s.stallRef.Load() != 0 {
		s.stallRef.Add(d)
	}
	s.emitSince.Store(0)
	if err != nil {
		s.c.log.Error().Err(err).Str("subject", ev.Subject).Str("type", ev.Type).Str("session", s.id).
			Msg("upstream event lost: could not queue it")
	}
}

// stallIdle is how long the controller has been silent as of now, from ref
// (the arming of the MONITOR, blockedAtRef the blocked total then), not
// counting the time the reader spent waiting in Emit.
func (s *session) stallIdle(now, ref time.Time, blockedAtRef int64) time.Duration {
	busy := s.emitSince.Load() // first: see emit
	last := ref.Add(time.Duration(s.blocked.Load() - blockedAtRef))
	if r := s.stallRef.Load(); r > last.UnixNano() {
		last = time.Unix(0, r)
	}
	if busy != 0 {
		// Waiting in Emit right now: the silence, if any, ended when it began.
		now = time.Unix(0, busy)
	}
	return now.Sub(last)
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
