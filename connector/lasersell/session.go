package lasersell

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/connector/connector"
)

// errConnLost is what a queued frame gets when its connection ends first.
var errConnLost = errors.New("the upstream connection ended before the frame was written")

// conn is one WebSocket connection. The fields after mu-guarded are guarded by
// Source.mu; the rest are set at creation.
type conn struct {
	ws     *websocket.Conn
	out    chan outFrame
	cancel context.CancelFunc

	causeMu sync.Mutex
	cause   sessionEnd // why the connection was torn down from our side
	// helloTimer ends a configured connection that gets no hello_ok in time.
	helloTimer *time.Timer

	// Guarded by Source.mu.
	ready     bool // hello_ok received
	sessionID string
	pings     []*pingWait     // application pings written and not answered yet, oldest first
	overrides map[uint64]bool // per-position strategies re-sent on this connection

	// The backoff reset (see healthyLocked), guarded by Source.mu.
	wantConfigure bool      // attach queued a configure
	establishedAt time.Time // hello_ok received and that configure written (zero: not yet)
	answered      bool      // a frame other than hello_ok or error arrived after hello_ok

	// Position reconciliation (see Source.reconcile), guarded by Source.mu.
	configured bool                // a configure was written on this connection
	upErrors   int                 // upstream error frames since the last configure was written
	announced  map[uint64]struct{} // positions announced (position_opened) on this connection
	settle     chan struct{}       // closed once ready and configured: the settle window starts
	settling   bool                // settle is closed
	reconciled bool                // stale positions were removed: every position is confirmed
}

// outFrame is one text frame for the writer. done, when set, receives the
// write's outcome; ping, when set, is registered just before the write so
// the RTT excludes queueing.
type outFrame struct {
	data []byte
	done chan error
	ping *pingWait
	// configure marks a configure frame: its write starts the reconciliation.
	configure bool
}

// pingWait is one application ping waiting for its pong.
type pingWait struct {
	sent  time.Time
	reply chan time.Duration // capacity 1; nil for the periodic keep-alive pings
}

// maxPendingPings bounds the pings remembered while the server stays silent.
const maxPendingPings = 16

// fail tears the connection down because its writer is stuck or failed.
func (c *conn) fail(reason string) { c.failWith(connector.ReasonWrite, reason) }

// failWith tears the connection down, remembering the first reason.
func (c *conn) failWith(code, reason string) {
	c.causeMu.Lock()
	if c.cause.code == "" {
		c.cause = sessionEnd{code: code, text: reason}
	}
	c.causeMu.Unlock()
	c.cancel()
}

func (c *conn) failure() sessionEnd {
	c.causeMu.Lock()
	defer c.causeMu.Unlock()
	return c.cause
}

// closeDrain bounds, at a graceful stop, the wait for the server's Close
// while the frames it sent before reading ours are still read and published.
const closeDrain = time.Second

// netDial is the dialer's TCP dial; it marks the dial's progress (see
// withDialProgress): a dial that times out after this timed out in the TLS
// handshake or the HTTP upgrade (a peer that accepts TCP and never answers),
// not in connect.
func netDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err == nil {
		if p, ok := ctx.Value(dialProgressKey{}).(*dialProgress); ok {
			p.tcpUp.Store(true)
		}
	}
	return nc, err
}

// session dials, runs one connection until it ends and reports whether it was
// healthy (see healthyLocked: the next reconnect starts the backoff over) and
// why it ended.
func (s *Source) session(ctx context.Context) (healthy bool, end sessionEnd) {
	if err := s.host.Fence(); err != nil {
		// Not certainly the owner: open no upstream session (it would count
		// against the API key's sessions and might write).
		return false, sessionEnd{code: connector.ReasonFenced, text: err.Error()}
	}
	pctx, progress := withDialProgress(ctx)
	dctx, cancelDial := context.WithTimeout(pctx, s.cfg.DialTimeout)
	ws, resp, err := s.dialer.DialContext(dctx, s.cfg.URL, s.header)
	cancelDial()
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, sessionEnd{code: connector.ReasonStopped, text: "connector shutting down"}
		}
		return false, dialFailure(err, resp, progress, s.cfg.DialTimeout)
	}
	if err := s.host.Fence(); err != nil {
		// Paused during the dial: the lease may be another replica's now.
		_ = ws.Close()
		return false, sessionEnd{code: connector.ReasonFenced, text: err.Error()}
	}
	cctx, cancel := context.WithCancel(ctx)
	c := &conn{
		ws: ws, out: make(chan outFrame, writeQueue), cancel: cancel, overrides: map[uint64]bool{},
		announced: map[uint64]struct{}{}, settle: make(chan struct{}),
	}
	s.log.Info().Str("url", redactURL(s.cfg.URL)).Msg("upstream connected; waiting for hello_ok")

	ws.SetReadLimit(readLimit)
	// The read deadline is set before every read (readLoop). Protocol-level
	// pings and pongs, handled inside a read, prove the peer alive: they extend
	// it, and pings are answered like gorilla's default handler does.
	ws.SetPingHandler(func(data string) error {
		_ = ws.SetReadDeadline(time.Now().Add(s.readDeadline()))
		if s.host.Fence() != nil {
			return nil // a fenced replica answers nothing, not even a pong
		}
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(s.cfg.WriteTimeout))
		var ne net.Error
		if err == nil || errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})
	ws.SetPongHandler(func(string) error {
		return ws.SetReadDeadline(time.Now().Add(s.readDeadline()))
	})

	var wg sync.WaitGroup
	wg.Go(func() { s.writeLoop(cctx, c) })
	wg.Go(func() { s.reconcileLoop(cctx, c) })
	readDone := make(chan struct{})
	// Frames read while draining at a graceful stop are still published: the
	// reader's context ends when the socket is closed, not with ctx (an exit
	// signal waiting for room in a full lane is not dropped because ctx ended).
	readCtx, cancelRead := context.WithCancel(context.WithoutCancel(ctx))
	wg.Go(func() {
		// The only way to interrupt a blocked read is to close the socket.
		<-cctx.Done()
		stopping := ctx.Err() != nil
		code := websocket.CloseNormalClosure
		if stopping {
			code = websocket.CloseGoingAway
		}
		if s.host.Fence() == nil { // a fenced replica writes nothing, not even a Close
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(250*time.Millisecond))
			if stopping {
				// A graceful stop (shutdown, handover): what the server sent
				// before it read our Close is still on its way, exit signals
				// included. Its own Close ends that (RFC 6455 5.5.1), so the
				// reader goes on until it arrives, for at most closeDrain.
				t := time.NewTimer(closeDrain)
				select {
				case <-readDone:
				case <-t.C:
				}
				t.Stop()
			}
		}
		_ = ws.Close()
		cancelRead() // the reader may wait for room in a lane: it ends now
	})

	s.attach(c)
	readErr := s.readLoop(readCtx, c)
	cancelRead()
	close(readDone)
	// Read the cause before tearing down: closing the socket makes a write in
	// flight fail too, and that is a consequence, not the reason.
	cause := c.failure()
	cancel()
	s.detach(c)
	wg.Wait()
	s.mu.Lock()
	if c.helloTimer != nil {
		c.helloTimer.Stop()
	}
	s.mu.Unlock()
	// Frames nobody will write: tell their waiters.
	for drained := false; !drained; {
		select {
		case f := <-c.out:
			if f.done != nil {
				f.done <- errConnLost
			}
		default:
			drained = true
		}
	}

	s.mu.Lock()
	healthy = c.healthyLocked(s.cfg.HealthyAfter)
	s.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		end = sessionEnd{code: connector.ReasonStopped, text: "connector shutting down"}
	case cause.code != "":
		end = cause
	default:
		end = readFailure(readErr, s.cfg.ReadTimeout)
	}
	return healthy, end
}

// establishLocked records the moment c became established: hello_ok
// received and, when attach queued a configure, that configure written, in
// either order. s.mu is held.
func (c *conn) establishLocked(now time.Time) {
	if c.establishedAt.IsZero() && c.ready && (c.configured || !c.wantConfigure) {
		c.establishedAt = now
	}
}

// healthyLocked reports whether the ended connection c resets the reconnect
// backoff: it was established (hello_ok and the configure went through) and
// then either the server sent it something besides an error, or it lived
// `after` past its establishment. A session dropped every few hundred
// milliseconds while data flows is therefore retried at the first delay
// every time, like the SDKs do; one that fails before it is established
// (dial, upgrade, no hello_ok, closed before the configure was written)
// keeps doubling its delay, and so does a server that answers hello_ok (or
// hello_ok and an error, a refused configure) and closes at once: a hot loop
// of accepted-then-dropped sessions still backs off to LASERSELL_BACKOFF_MAX.
// s.mu is held.
func (c *conn) healthyLocked(after time.Duration) bool {
	if c.establishedAt.IsZero() {
		return false
	}
	return c.answered || connector.Healthy(c.establishedAt, after)
}

// armHelloLocked starts the hello_ok wait once a configure is written on a
// connection not yet established. Only then: a server of the SDKs' order
// answers hello_ok to the configure, so an unconfigured session may wait for
// it indefinitely (the read timeout still applies). s.mu is held.
func (s *Source) armHelloLocked(c *conn) {
	if c.ready || c.helloTimer != nil {
		return
	}
	wait := s.cfg.DialTimeout
	c.helloTimer = time.AfterFunc(wait, func() {
		s.mu.Lock()
		ready := c.ready
		s.mu.Unlock()
		if !ready {
			c.failWith(connector.ReasonHandshakeTimeout, fmt.Sprintf("handshake timeout: no hello_ok within %s of the configure", wait))
		}
	})
}

// attach makes c the current connection and queues the desired configure as
// its first frame, so commands queued afterwards always follow it.
func (s *Source) attach(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn = c
	if s.desired == nil {
		return
	}
	data, err := json.Marshal(configureFrame{Type: typeConfigure, Configure: *s.desired})
	if err != nil { // cannot happen: the value was validated and encoded before
		s.log.Error().Err(err).Msg("could not encode the desired configure")
		return
	}
	c.wantConfigure = true
	c.out <- outFrame{data: data, configure: true} // the queue is new and empty: never blocks
	s.log.Info().Int("wallets", len(s.desired.WalletPubkeys)).Msg("configure queued for the new connection")
}

// detach forgets c and fails the pings still waiting on it.
func (s *Source) detach(c *conn) {
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	wasReady := c.ready
	c.ready = false
	c.pings = nil
	s.mu.Unlock()
	if wasReady {
		s.host.Metrics().Connected.Set(0)
	}
}

// enqueueLocked queues a frame on c without blocking. s.mu must be held.
func (c *conn) enqueueLocked(f outFrame) bool {
	select {
	case c.out <- f:
		return true
	default:
		return false
	}
}

// writeLoop is the only writer of data frames (gorilla allows one); it also
// sends the periodic application ping once the session is established.
func (s *Source) writeLoop(ctx context.Context, c *conn) {
	ticker := time.NewTicker(s.cfg.PingInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-c.out:
			err := s.write(c, f)
			if f.done != nil {
				f.done <- err
			}
			if err != nil {
				if ctx.Err() == nil { // else the socket was closed under us
					c.failWith(connector.WriteEndReason(err), "write failed: "+err.Error())
				}
				return
			}
		case <-ticker.C:
			s.mu.Lock()
			ready := c.ready
			s.mu.Unlock()
			if !ready {
				continue
			}
			if err := s.write(c, pingOut(nil)); err != nil {
				if ctx.Err() == nil {
					c.failWith(connector.WriteEndReason(err), "write failed: "+err.Error())
				}
				return
			}
		}
	}
}

// pingOut builds an application ping frame.
func pingOut(reply chan time.Duration) outFrame {
	data, _ := json.Marshal(pingFrame{Type: typePing, ClientTimeMS: time.Now().UnixMilli()})
	return outFrame{data: data, ping: &pingWait{reply: reply}}
}

func (s *Source) write(c *conn, f outFrame) error {
	if err := s.host.Fence(); err != nil {
		// A process resumed after a pause: its lease may be another
		// replica's by now, so nothing more is written on this connection.
		c.failWith(connector.ReasonFenced, err.Error())
		return fmt.Errorf("write refused: %w", err)
	}
	if f.ping != nil {
		s.mu.Lock()
		f.ping.sent = time.Now()
		if len(c.pings) >= maxPendingPings {
			c.pings = c.pings[1:]
		}
		c.pings = append(c.pings, f.ping)
		s.mu.Unlock()
	}
	if f.configure {
		// Errors from here on may be the server refusing this configure.
		s.mu.Lock()
		c.upErrors = 0
		s.mu.Unlock()
	}
	if err := c.ws.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, f.data); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	if f.configure {
		s.mu.Lock()
		c.configured = true
		c.establishLocked(time.Now())
		c.armSettleLocked()
		s.armHelloLocked(c)
		s.mu.Unlock()
	}
	return nil
}

// readLoop reads and routes frames until the connection fails. Publishing
// happens inline: a full high lane stops the reading, which is the
// backpressure the design asks for. The read deadline is checked right
// before each read, so the time spent waiting for the lane (NATS slow or
// down) never counts as upstream silence: backpressure must not look like a
// dead peer. Re-arming it costs a timer update, which at a hundred thousand
// frames a second was 4 % of the connector's CPU (BENCHMARKS.md, issue 12):
// so it is re-armed only once it is an eighth of the read timeout old, a
// little further out, and silence is detected after between ReadTimeout and
// 9/8 of it.
//
// Each frame is read into one reused buffer and copied out at its exact size
// (it becomes the event's payload): gorilla's ReadMessage allocates at least
// 512 bytes per frame, twice a typical PnL update, and at 100k frames a
// second the extra memory was GC and page-fault work (BENCHMARKS.md).
func (s *Source) readLoop(ctx context.Context, c *conn) error {
	slack := s.cfg.ReadTimeout / 8
	var armed time.Time
	var buf bytes.Buffer
	for {
		if now := time.Now(); now.Sub(armed) >= slack {
			if err := c.ws.SetReadDeadline(now.Add(s.readDeadline())); err != nil {
				return err
			}
			armed = now
		}
		mt, r, err := c.ws.NextReader()
		if err != nil {
			return err
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return err
		}
		// A frame over maxEventBytes is cut to its start by handleFrame,
		// which copies that: only a frame published whole is copied whole.
		data := buf.Bytes()
		if len(data) <= maxEventBytes {
			data = bytes.Clone(data)
		}
		if buf.Cap() > reusedFrameBuffer {
			buf = bytes.Buffer{} // an unusually large frame: do not keep its buffer
		}
		if err := s.handleFrame(ctx, c, mt, data, time.Now()); err != nil {
			return err
		}
	}
}

// reusedFrameBuffer is the largest read buffer readLoop keeps between frames.
const reusedFrameBuffer = 64 << 10

// readDeadline is how far out the read deadline is armed: the read timeout
// plus the slack of readLoop's re-arming.
func (s *Source) readDeadline() time.Duration { return s.cfg.ReadTimeout + s.cfg.ReadTimeout/8 }

// onHello records the session id and limits and announces the connection.
func (s *Source) onHello(ctx context.Context, c *conn, data []byte, now time.Time) {
	var h struct {
		SessionID json.RawMessage `json:"session_id"`
		Limits    json.RawMessage `json:"limits"`
	}
	_ = json.Unmarshal(data, &h) // the frame is a valid object; a wrong field type leaves it empty
	var lim Limits
	// Unknown limit fields are ignored; a known one of the wrong type stays zero (not enforced).
	_ = json.Unmarshal(h.Limits, &lim)
	id := scalarText(h.SessionID)

	s.mu.Lock()
	c.ready = true
	c.sessionID = id
	c.establishLocked(now)
	s.limits = lim
	desired := s.desired
	c.armSettleLocked()
	s.mu.Unlock()

	s.host.Metrics().Connected.Set(1)
	detail := map[string]any{"configured": desired != nil, "url": redactURL(s.cfg.URL)}
	var limits any
	if len(h.Limits) > 0 && json.Valid(h.Limits) {
		detail["limits"], limits = h.Limits, h.Limits
	}
	s.log.Info().Str("upstream_session", id).RawJSON("limits", validOrNull(h.Limits)).
		Bool("configured", desired != nil).Msg("upstream session established (hello_ok)")
	if desired != nil {
		if err := validateWallets(desired.WalletPubkeys, lim); err != nil {
			s.log.Warn().Str("problem", err.Message).Msg("the desired configure exceeds the limits this session advertises; the server may refuse it")
		} else if err := validateWatchWallets(desired.WatchWallets, lim); err != nil {
			s.log.Warn().Str("problem", err.Message).Msg("the desired configure exceeds the limits this session advertises; the server may refuse it")
		}
	}
	s.host.Report(connector.Status{State: connector.StateConnected, UpstreamSession: id, Detail: detail, Limits: limits})
	// Deadlines that passed while disconnected can be requested now.
	s.wakeDeadlines()
}

// onPong completes the oldest outstanding ping. The protocol's pong carries
// only server_time_ms, so pongs are matched to pings in order.
func (s *Source) onPong(c *conn, now time.Time) {
	s.mu.Lock()
	if len(c.pings) == 0 {
		s.mu.Unlock()
		return
	}
	p := c.pings[0]
	c.pings = c.pings[1:]
	s.mu.Unlock()
	rtt := now.Sub(p.sent)
	s.host.Metrics().RTT.Set(rtt.Seconds())
	if p.reply != nil {
		p.reply <- rtt
	}
}

// scalarText renders a JSON number or string as text ("" for anything else).
func scalarText(raw json.RawMessage) string {
	// The id goes into a header of every high-lane message: an absurdly long
	// one is dropped rather than copied a million times.
	if len(raw) == 0 || len(raw) > maxSessionIDBytes {
		return ""
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil && safeHeader(s) {
			return s
		}
		return ""
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// maxSessionIDBytes bounds the upstream session id kept for headers and status.
const maxSessionIDBytes = 128

func validOrNull(raw json.RawMessage) []byte {
	if len(raw) == 0 || !json.Valid(raw) {
		return []byte("null")
	}
	return raw
}

// dialFailure describes a failed dial without ever quoting request headers.
// progress says how far it got: a failure in the TLS handshake is told by
// tlsFailure; a timeout after the TCP connection (and TLS, for wss://) was
// established is a peer that never answered the upgrade.
func dialFailure(err error, resp *http.Response, progress *dialProgress, timeout time.Duration) sessionEnd {
	if resp != nil {
		msg := "upgrade refused: HTTP " + strconv.Itoa(resp.StatusCode)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return sessionEnd{code: connector.ReasonAuth, text: msg + " (check the API key)"}
		}
		return sessionEnd{code: connector.ReasonDial, text: msg}
	}
	if progress.inTLS() {
		return tlsFailure(err, timeout)
	}
	var ne net.Error
	if progress.tcpUp.Load() && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		return sessionEnd{code: connector.ReasonHandshakeTimeout, text: fmt.Sprintf("handshake timeout: no WebSocket upgrade answer within %s", timeout)}
	}
	return sessionEnd{code: connector.ReasonDial, text: "dial failed: " + err.Error()}
}

func readFailure(err error, timeout time.Duration) sessionEnd {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case err == nil:
		return sessionEnd{code: connector.ReasonClosedByPeer, text: "connection ended"}
	case errors.As(err, &ce):
		// An abrupt TCP close reads as close code 1006 (abnormal closure).
		return sessionEnd{code: connector.ReasonClosedByPeer, text: fmt.Sprintf("closed by upstream: %d %s", ce.Code, ce.Text)}
	case errors.As(err, &ne) && ne.Timeout():
		return sessionEnd{code: connector.ReasonReadTimeout, text: fmt.Sprintf("read timeout: nothing received for %s", timeout)}
	case errors.Is(err, websocket.ErrReadLimit):
		return sessionEnd{code: connector.ReasonProtocol, text: fmt.Sprintf("frame larger than %d bytes", readLimit)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return sessionEnd{code: connector.ReasonClosedByPeer, text: "read failed: " + err.Error()}
	case errors.Is(err, net.ErrClosed):
		// Our side closed the socket (teardown) without recording why.
		return sessionEnd{code: connector.ReasonStopped, text: "read failed: " + err.Error()}
	}
	// Anything else the WebSocket layer refuses (bad framing, bad UTF-8 in a
	// close frame, reserved bits...) is a protocol violation.
	return sessionEnd{code: connector.ReasonProtocol, text: "read failed: " + err.Error()}
}
