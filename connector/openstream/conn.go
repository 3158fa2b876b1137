package openstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
	code    string // one of the reason codes below
	refused bool   // version_mismatch / handshake_rejected: retry slowly
	healthy bool   // lived long enough (and streamed) to reset the backoff
	stopped bool   // ended on purpose
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
	for i, q := range c.waiters {
		if q == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			return
		}
	}
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
	for _, x := range []time.Duration{cfg.StallMin / 4, cfg.Keepalive / 4, cfg.IdleKeepalive / 4} {
		if x > 0 && x < d {
			d = x
		}
	}
	return max(d, 2*time.Millisecond)
}

// run keeps the connection up: the first reconnect is immediate, later ones
// back off exponentially; a refused handshake waits the slow retry delay.
func (c *conn) run(ctx context.Context) {
	defer close(c.done)
	defer c.r.report(c, connector.StateStopped, "connection closed on purpose", 0, 0, nil)
	cfg := &c.r.common
	failures, refusals := 0, 0
	c.r.report(c, connector.StateConnecting, "", 0, 0, nil)
	for n := 1; ; n++ {
		end := c.runSession(ctx, n)
		if ctx.Err() != nil || end.stopped {
			return
		}
		var delay time.Duration
		if end.refused {
			refusals++
			delay = backoff(cfg.HandshakeRetryMin, cfg.HandshakeRetryMax, refusals-1)
		} else {
			refusals = 0
			if end.healthy {
				failures = 0
			}
			if failures > 0 {
				delay = backoff(cfg.BackoffMin, cfg.BackoffMax, failures-1)
			}
		}
		failures++
		c.r.host.Metrics().Reconnects.WithLabelValues(end.reasonCode()).Inc()
		detail := map[string]any{"reason_code": end.reasonCode()}
		c.mu.Lock()
		if !c.lastData.IsZero() {
			detail["since_data_ms"] = time.Since(c.lastData).Milliseconds()
		}
		c.mu.Unlock()
		c.log.Warn().Str("reason", end.reason).Str("reason_code", end.reasonCode()).Int("attempt", failures).Dur("backoff", delay).Msg("reconnecting to the controller")
		c.r.report(c, connector.StateReconnecting, end.reason, failures, delay, detail)
		if !sleep(ctx, delay) {
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
	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: keepAlive}
	nc, err := d.DialContext(ctx, "tcp", c.r.cfg.Addr)
	if err != nil {
		return sessionEnd{reason: "dial: " + err.Error(), code: reasonDial}
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
		return sessionEnd{reason: err.Error(), code: reasonProtocol}
	}
	sent := time.Now()
	p, err := s.request(ctx, pendHandshake, "", 0, line)
	if err != nil {
		return sessionEnd{reason: "handshake: " + err.Error(), code: s.codeOr(reasonClosedByPeer)}
	}
	o, err := s.awaitOrEnd(ctx, p, cfg.AckTimeout)
	var late *noAnswerError
	switch {
	case ctx.Err() != nil:
		return sessionEnd{reason: "shutdown", code: reasonStopped, stopped: true}
	case errors.As(err, &late):
		return sessionEnd{reason: "handshake: " + err.Error(), code: reasonHandshakeTimeout}
	case err != nil:
		return sessionEnd{reason: "handshake: " + err.Error(), code: s.codeOr(reasonClosedByPeer)}
	case o.err != nil:
		code := reasonProtocol
		switch o.err.Code {
		case reasonVersionMismatch, reasonHandshakeRejected:
			code = o.err.Code
			c.log.Error().Str("code", o.err.Code).Str("message", o.err.Message).Int("major", cfg.Major).Msg("the controller refused the HANDSHAKE")
		}
		return sessionEnd{reason: o.err.Code + ": " + o.err.Message, code: code, refused: code != reasonProtocol}
	}
	rtt := time.Since(sent)
	c.r.host.Metrics().RTT.Set(rtt.Seconds())
	var ack struct {
		Version string `json:"version"`
	}
	_ = json.Unmarshal(o.line, &ack)
	c.setSession(s)
	c.log.Info().Str("version", ack.Version).Dur("rtt", rtt).Str("session", s.id).Msg("connected to the controller")
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
			return sessionEnd{reason: "shutdown", code: reasonStopped, stopped: true}
		case <-s.ended:
			lived := time.Since(s.opened)
			return sessionEnd{
				reason:  s.endReason,
				code:    s.codeOr(reasonClosedByPeer),
				healthy: lived >= cfg.HealthyAfter && (c.monitor == "" || s.gotData.Load()),
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
			case c.monitor != "" && cfg.Keepalive > 0 && sinceCmd >= cfg.Keepalive:
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
		ev = ev.Dur("gap", gap)
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
	keep := s.pend[:0]
	for _, p := range s.pend {
		if now.Sub(p.sentAt) < age {
			keep = append(keep, p)
		}
	}
	for i := len(keep); i < len(s.pend); i++ {
		s.pend[i] = nil
	}
	s.pend = keep
}

// backoff returns min·2^n, capped.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	d := minD
	for i := 0; i < n && d < maxD; i++ {
		d *= 2
	}
	return min(d, maxD)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Reason codes: why a connection ended, a small fixed set shared in spirit
// with the LaserSell source. Each is the reason label of
// connector_upstream_reconnects_total and detail.reason_code of the
// reconnecting status (whose reason keeps the free text).
const (
	reasonDial              = "dial"               // TCP connect failed
	reasonHandshakeTimeout  = "handshake_timeout"  // no handshake_ack (nor error) within OPENSTREAM_ACK_TIMEOUT
	reasonHandshakeRejected = "handshake_rejected" // the controller refused the HANDSHAKE
	reasonVersionMismatch   = "version_mismatch"   // the controller speaks another MAJOR
	reasonStalled           = "stalled"            // no MONITOR data for the stall timeout
	reasonPingTimeout       = "ping_timeout"       // a keepalive went unanswered (control connection)
	reasonWatchdog          = "watchdog"           // the controller's session_timeout
	reasonClosedByPeer      = "closed_by_peer"     // EOF or reset from the controller
	reasonProtocol          = "protocol"           // stop_failed, handshake_required, unexpected HANDSHAKE error
	reasonWrite             = "write"              // a write failed or timed out
	reasonStopped           = "stopped"            // ended on purpose
)

// reasonCode is the bounded label of connector_upstream_reconnects_total.
func (e sessionEnd) reasonCode() string {
	if e.code == "" {
		return reasonProtocol
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
