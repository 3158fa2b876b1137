package openstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// conn is one long-lived logical connection of a robot: a named monitor
// (one MONITOR per TCP connection, a protocol rule) or the control connection.
// It reconnects by itself until its context ends, then stops gracefully.
type conn struct {
	r           *Robot
	id          string // "monitor/<name>" or "control"
	monitor     string // monitor name; empty on the control connection
	dataSubject string
	log         zerolog.Logger
	cancel      context.CancelFunc
	emitCtx     context.Context // the robot's: upstream lines are emitted with it
	done        chan struct{}
	apply       chan struct{} // capacity 1: the desired recipe changed

	// keepaliveEvery is the keep-alive interval on a monitor connection:
	// OPENSTREAM_KEEPALIVE, halved after each session_timeout down to
	// keepaliveFloor (the watchdog "may change with server policy"). Only
	// the connection's own goroutine (run, runSession) uses it.
	keepaliveEvery time.Duration

	mu          sync.Mutex
	recipe      Recipe // desired MONITOR
	version     uint64 // bumped on every change of recipe
	waiters     []*monWaiter
	sess        *session // set while handshaken
	lastData    time.Time
	stopOutcome string // how the last graceful STOP session went
}

type monWaiter struct {
	version uint64
	done    chan outcome // capacity 1
}

// sessionEnd says why a session ended and how to go on.
type sessionEnd struct {
	reason  string
	code    string // a reconnect reason code: the core's, or one below
	refused bool   // version_mismatch / handshake_rejected: retry slowly
	healthy bool   // lived long enough (and streamed) to reset the backoff
	// streamed: handshook and, on a monitor connection, received data.
	streamed bool
	stopped  bool // ended on purpose
}

const controlConnID = "control"

func newConn(r *Robot, monitor string, recipe Recipe) *conn {
	c := &conn{r: r, monitor: monitor, recipe: recipe, version: 1, done: make(chan struct{}), apply: make(chan struct{}, 1)}
	if monitor == "" {
		c.id = controlConnID
	} else {
		c.id = "monitor/" + monitor
		c.dataSubject = subjects.OpenStreamData(r.cfg.Name, monitor)
	}
	c.log = r.log.With().Str("conn", c.id).Logger()
	return c
}

// session returns the current handshaken session, or nil.
func (c *conn) session() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess
}

func (c *conn) setSession(s *session) {
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
}

func (c *conn) current() (Recipe, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recipe, c.version
}

// setRecipe changes the desired MONITOR; with wait it returns a waiter for
// the controller's answer.
func (c *conn) setRecipe(r Recipe, wait bool) *monWaiter {
	c.mu.Lock()
	c.recipe = r
	c.version++
	var w *monWaiter
	if wait {
		w = &monWaiter{version: c.version, done: make(chan outcome, 1)}
		c.waiters = append(c.waiters, w)
	}
	c.mu.Unlock()
	select {
	case c.apply <- struct{}{}:
	default:
	}
	return w
}

// waiter registers interest in the answer to the current recipe.
func (c *conn) waiter() *monWaiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &monWaiter{version: c.version, done: make(chan outcome, 1)}
	c.waiters = append(c.waiters, w)
	return w
}

func (c *conn) dropWaiter(w *monWaiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiters = slices.DeleteFunc(c.waiters, func(q *monWaiter) bool { return q == w })
}

// monitorAnswered is called by the reader when a MONITOR of recipe version v
// was acknowledged or refused; it answers every command waiting for v or older.
func (c *conn) monitorAnswered(v uint64, o outcome) {
	c.mu.Lock()
	var ready []*monWaiter
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if w.version <= v {
			ready = append(ready, w)
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
	c.mu.Unlock()
	for _, w := range ready {
		w.done <- o
	}
}

// stallTimeout is how long a monitor may go without data before the session
// is declared stalled.
func (c *conn) stallTimeout(r Recipe) time.Duration {
	cfg := &c.r.common
	d := time.Duration(cfg.StallPeriods) * time.Duration(r.PeriodMS) * time.Millisecond
	if d < cfg.StallMin {
		d = cfg.StallMin
	}
	return d
}

// tickInterval drives stall detection and keepalives.
func (c *conn) tickInterval() time.Duration {
	cfg := &c.r.common
	d := 250 * time.Millisecond
	for _, x := range []time.Duration{cfg.StallMin / 4, c.keepaliveEvery / 4, cfg.IdleKeepalive / 4} {
		if x > 0 && x < d {
			d = x
		}
	}
	return max(d, 2*time.Millisecond)
}

// run keeps the connection up: the first reconnect is immediate (a dropped
// connection is most likely back already, and a data gap costs more than one
// wasted attempt), later ones back off exponentially until a healthy session;
// a refused handshake waits the slow retry delay.
func (c *conn) run(ctx context.Context) {
	defer close(c.done)
	defer c.r.report(c, connector.StateStopped, "connection closed on purpose", 0, 0, nil)
	cfg := &c.r.common
	// Every failure, refused handshakes included, advances the reconnect
	// schedule; a refused handshake waits the slower refusal schedule instead,
	// which any other ending starts over.
	bo := connector.Backoff{Base: cfg.BackoffMin, Max: cfg.BackoffMax, Immediate: true}
	refusedBo := connector.Backoff{Base: cfg.HandshakeRetryMin, Max: cfg.HandshakeRetryMax}
	failures := 0
	c.keepaliveEvery = cfg.Keepalive
	c.r.report(c, connector.StateConnecting, "", 0, 0, nil)
	for n := 1; ; n++ {
		end := c.runSession(ctx, n)
		if ctx.Err() != nil || end.stopped {
			return
		}
		if end.code == reasonWatchdog && c.monitor != "" && c.keepaliveEvery > keepaliveFloor {
			// The controller's watchdog is stricter than our keep-alive:
			// adapt, so that data keeps flowing under any watchdog we can outpace.
			c.keepaliveEvery = max(c.keepaliveEvery/2, keepaliveFloor)
			c.log.Warn().Dur("keepalive_ms", c.keepaliveEvery).Msg("the controller's watchdog closed the session: keep-alive shortened")
		}
		if end.healthy || end.code == reasonWatchdog && end.streamed {
			// A session the watchdog closed after it handshook and streamed
			// is not a failing controller: reconnect at once.
			bo.Reset()
			failures = 0
		}
		delay := bo.Next()
		if end.refused {
			delay = refusedBo.Next()
		} else {
			refusedBo.Reset()
		}
		failures++
		c.r.host.Metrics().Reconnects.WithLabelValues(end.reasonCode()).Inc()
		detail := map[string]any{"reason_code": end.reasonCode()}
		c.mu.Lock()
		if !c.lastData.IsZero() {
			detail["since_data_ms"] = time.Since(c.lastData).Milliseconds()
		}
		c.mu.Unlock()
		c.log.Warn().Str("reason", end.reason).Str("reason_code", end.reasonCode()).Int("attempt", failures).Dur("backoff_ms", delay).Msg("reconnecting to the controller")
		c.r.report(c, connector.StateReconnecting, end.reason, failures, delay, detail)
		if !connector.Sleep(ctx, delay) {
			return
		}
	}
}

// runSession is one TCP connection: HANDSHAKE, restore the MONITOR, stream
// until it ends. On ctx end it sends STOP session and waits briefly.
func (c *conn) runSession(ctx context.Context, n int) (end sessionEnd) {
	cfg := &c.r.common
	keepAlive := cfg.TCPKeepAlive
	if keepAlive == 0 {
		keepAlive = -1 // disabled
	}
	if err := c.r.host.Fence(); err != nil {
		return sessionEnd{reason: err.Error(), code: connector.ReasonFenced} // not certainly the owner: no connection
	}
	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: keepAlive}
	nc, err := d.DialContext(ctx, "tcp", c.r.cfg.Addr)
	if err != nil {
		return sessionEnd{reason: "dial: " + err.Error(), code: connector.ReasonDial}
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		// Small command lines must not wait for Nagle (CONTROL at 500 Hz).
		_ = tc.SetNoDelay(true)
	}
	s := newSession(c, nc, n)
	s.start()
	defer func() {
		c.setSession(nil)
		s.close()
		if s.gotData.Load() {
			c.mu.Lock()
			c.lastData = time.Unix(0, s.lastData.Load())
			c.mu.Unlock()
		}
	}()

	// HANDSHAKE first: nothing else is accepted before it.
	line, err := encodeCmd(cmdHandshake, handshakePayload{Major: cfg.Major})
	if err != nil {
		return sessionEnd{reason: err.Error(), code: connector.ReasonProtocol}
	}
	sent := time.Now()
	p, err := s.request(ctx, pendHandshake, "", 0, line)
	if err != nil {
		return sessionEnd{reason: "handshake: " + err.Error(), code: s.codeOr(connector.ReasonClosedByPeer)}
	}
	o, err := s.awaitOrEnd(ctx, p, cfg.AckTimeout)
	var late *noAnswerError
	switch {
	case ctx.Err() != nil:
		return sessionEnd{reason: "shutdown", code: connector.ReasonStopped, stopped: true}
	case errors.As(err, &late):
		return sessionEnd{reason: "handshake: " + err.Error(), code: connector.ReasonHandshakeTimeout}
	case err != nil:
		return sessionEnd{reason: "handshake: " + err.Error(), code: s.codeOr(connector.ReasonClosedByPeer)}
	case o.err != nil:
		code := connector.ReasonProtocol
		switch o.err.Code {
		case reasonVersionMismatch, reasonHandshakeRejected:
			code = o.err.Code
			c.log.Error().Str("code", o.err.Code).Str("message", o.err.Message).Int("major", cfg.Major).Msg("the controller refused the HANDSHAKE")
		}
		return sessionEnd{reason: o.err.Code + ": " + o.err.Message, code: code, refused: code != connector.ReasonProtocol}
	}
	rtt := time.Since(sent)
	c.r.host.Metrics().RTT.Set(rtt.Seconds())
	var ack struct {
		Version string `json:"version"`
	}
	_ = json.Unmarshal(o.line, &ack)
	c.setSession(s)
	c.log.Info().Str("version", ack.Version).Dur("rtt_ms", rtt).Str("session", s.id).Msg("connected to the controller")
	c.r.report(c, connector.StateConnected, "", 0, 0, map[string]any{
		"version": ack.Version, "session": s.id, "handshake_rtt_ms": float64(rtt.Microseconds()) / 1000,
	})

	var (
		armed        bool
		armedAt      time.Time
		armedBlocked int64 // s.blocked at armedAt
		armedVer     uint64
		stall        time.Duration
		firstData    = s.firstData
	)
	sendMonitor := func(keepalive bool) {
		rec, v := c.current()
		line, err := monitorLine(rec)
		if err != nil {
			c.log.Error().Err(err).Msg("cannot encode MONITOR")
			return
		}
		if _, err := s.send(ctx, &pending{kind: pendMonitor, version: v, keepalive: keepalive}, line); err != nil {
			return // the session is ending; the next one restores the MONITOR
		}
		if v != armedVer {
			// A new recipe restarts the stall clock; a keepalive re-send does not.
			armed, armedAt, armedBlocked, armedVer, stall = true, time.Now(), s.blocked.Load(), v, c.stallTimeout(rec)
		}
	}
	if c.monitor != "" {
		select {
		case <-c.apply: // this MONITOR carries the latest recipe already
		default:
		}
		sendMonitor(false)
	}

	tick := time.NewTicker(c.tickInterval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.gracefulStop(s)
			return sessionEnd{reason: "shutdown", code: connector.ReasonStopped, stopped: true}
		case <-s.ended:
			return sessionEnd{
				reason:   s.endReason,
				code:     s.codeOr(connector.ReasonClosedByPeer),
				healthy:  connector.Healthy(s.opened, cfg.HealthyAfter) && (c.monitor == "" || s.gotData.Load()),
				streamed: c.monitor == "" || s.gotData.Load(),
			}
		case <-c.apply:
			if c.monitor != "" {
				sendMonitor(false)
			}
		case <-firstData:
			firstData = nil
			c.reportStreaming(s)
		case now := <-tick.C:
			// Time the reader spends waiting for room in the high lane is
			// backpressure from NATS, not a stalled controller.
			if armed {
				if idle := s.stallIdle(now, armedAt, armedBlocked); idle > stall {
					return sessionEnd{reason: fmt.Sprintf("stalled: no data for %d ms", idle.Milliseconds()), code: reasonStalled}
				}
			}
			// The control connection carries no data, so a silent (half-open)
			// controller shows only as an unanswered keepalive.
			if c.monitor == "" && s.overdueKeepalive(now, cfg.AckTimeout) {
				return sessionEnd{reason: fmt.Sprintf("keepalive unanswered for %s: the controller is silent", cfg.AckTimeout), code: reasonPingTimeout}
			}
			sinceCmd := now.Sub(time.Unix(0, s.lastCmd.Load()))
			switch {
			case c.monitor != "" && c.keepaliveEvery > 0 && sinceCmd >= c.keepaliveEvery:
				if cfg.KeepaliveMode == KeepaliveMonitor {
					sendMonitor(true)
				} else {
					c.keepalive(ctx, s, targetControl)
				}
			case c.monitor == "" && cfg.IdleKeepalive > 0 && sinceCmd >= cfg.IdleKeepalive:
				c.keepalive(ctx, s, targetMonitor)
			}
			s.prune(now, 2*cfg.AckTimeout)
		}
	}
}

// keepalive refreshes the controller's watchdog with STOP of a target that is
// never active on this connection (CONTROL on a monitor connection, MONITOR on
// the control connection): the controller acts on it and answers
// nothing_to_stop, which is consumed here rather than published.
func (c *conn) keepalive(ctx context.Context, s *session, target string) {
	line, err := encodeCmd(cmdStop, stopPayload{Target: target})
	if err != nil {
		return
	}
	_, _ = s.send(ctx, &pending{kind: pendStop, target: target, keepalive: true}, line)
}

// reportStreaming publishes the first data after a (re)connect, with the gap
// since the last data of the previous session.
func (c *conn) reportStreaming(s *session) {
	first := time.Unix(0, s.firstAt.Load())
	detail := map[string]any{"session": s.id}
	c.mu.Lock()
	prev := c.lastData
	c.mu.Unlock()
	ev := c.log.Info().Str("session", s.id)
	if !prev.IsZero() {
		gap := first.Sub(prev)
		detail["gap_ms"] = float64(gap.Microseconds()) / 1000
		ev = ev.Dur("gap_ms", gap)
	}
	ev.Msg("monitor data is flowing")
	c.r.report(c, StateStreaming, "", 0, 0, detail)
}

// gracefulStop sends STOP session and waits at most StopTimeout for stop_ack.
func (c *conn) gracefulStop(s *session) {
	cfg := &c.r.common
	outcome := "not_sent"
	defer func() {
		c.mu.Lock()
		c.stopOutcome = outcome
		c.mu.Unlock()
	}()
	line, err := encodeCmd(cmdStop, stopPayload{Target: targetSession})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout)
	defer cancel()
	p, err := s.request(ctx, pendStop, targetSession, 0, line)
	if err != nil {
		return
	}
	o, err := s.awaitOrEnd(ctx, p, cfg.StopTimeout)
	switch {
	case err != nil:
		outcome = "no stop_ack: " + err.Error()
	case o.err != nil:
		outcome = o.err.Code
	default:
		outcome = evStopAck
	}
}

// awaitOrEnd waits for the answer to p, the end of the session, ctx or timeout.
func (s *session) awaitOrEnd(ctx context.Context, p *pending, timeout time.Duration) (outcome, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case o := <-p.done:
		if o.closed {
			return o, errSessionClosed
		}
		return o, nil
	case <-s.ended:
		// The answer may have arrived just before the end (an error line,
		// then the controller closes): it wins over the end.
		select {
		case o := <-p.done:
			if !o.closed {
				return o, nil
			}
		default:
		}
		s.forget(p)
		return outcome{}, fmt.Errorf("%w (%s)", errSessionClosed, s.endReason)
	case <-t.C:
		s.forget(p)
		return outcome{}, &noAnswerError{kind: p.kind, timeout: timeout}
	case <-ctx.Done():
		s.forget(p)
		return outcome{}, ctx.Err()
	}
}

// noAnswerError is a command the controller did not answer in time.
type noAnswerError struct {
	kind    pendingKind
	timeout time.Duration
}

func (e *noAnswerError) Error() string {
	return fmt.Sprintf("no answer to %s within %s", e.kind, e.timeout)
}

// prune forgets internal commands the controller never answered, so the
// pending list cannot grow without bound (keepalives on a silent server).
func (s *session) prune(now time.Time, age time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pend = slices.DeleteFunc(s.pend, func(p *pending) bool { return now.Sub(p.sentAt) >= age })
}

// Reconnect reason codes of Open Stream alone: the core's (connector.ReasonDial
// ...) cover the rest. Like those, each is the reason label of
// connector_upstream_reconnects_total and detail.reason_code of the
// reconnecting status (whose reason keeps the free text); the values are
// documented in RELIABILITY.md and must not change. The core codes mean here:
// dial (TCP connect failed), handshake_timeout (no handshake_ack nor error
// within OPENSTREAM_ACK_TIMEOUT), closed_by_peer (EOF or reset from the
// controller, whether a read or a write saw it first), protocol (stop_failed,
// handshake_required, an unexpected HANDSHAKE error), write (a write timed out
// or failed otherwise), stopped (ended on purpose).
const (
	// reasonHandshakeRejected: the controller refused the HANDSHAKE
	// (retried on the slower refusal schedule). Also the protocol's error code.
	reasonHandshakeRejected = "handshake_rejected"
	// reasonVersionMismatch: the controller speaks another MAJOR (retried on
	// the refusal schedule). Also the protocol's error code.
	reasonVersionMismatch = "version_mismatch"
	// reasonStalled: a monitor connection got no data for its stall timeout.
	reasonStalled = "stalled"
	// reasonPingTimeout: a keepalive went unanswered on the control
	// connection, which carries no data to notice a silent controller by.
	reasonPingTimeout = "ping_timeout"
	// keepaliveFloor is the shortest keep-alive interval adaptation goes to.
	keepaliveFloor = 100 * time.Millisecond
	// reasonWatchdog: the controller ended the session with session_timeout
	// (its watchdog saw no command in time).
	reasonWatchdog = "watchdog"
)

// reasonCode is the bounded label of connector_upstream_reconnects_total.
func (e sessionEnd) reasonCode() string {
	if e.code == "" {
		return connector.ReasonProtocol
	}
	return e.code
}

// codeOr is the session's end code, or def when it has not ended (or ended
// without one).
func (s *session) codeOr(def string) string {
	select {
	case <-s.ended:
		if s.endCode != "" {
			return s.endCode
		}
	default:
	}
	return def
}
