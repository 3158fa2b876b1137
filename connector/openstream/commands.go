package openstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"path"
	"strings"
	"time"

	"github.com/jetbridge/connector/connector"
)

// Refusal codes of this source (besides the controller's own error codes,
// which are passed through, and the core's).
const (
	CodeControlDisabled   = "control_disabled"    // the robot has no CONTROL allow-list
	CodeControlNotAllowed = "control_not_allowed" // the URL matches no allow-list pattern
	CodeNotConnected      = "not_connected"       // the connection is down right now
	CodeSessionStopped    = "session_stopped"     // after STOP session, until a monitor command
	CodeUnknownMonitor    = "unknown_monitor"
	CodeInvalidName       = "invalid_name"
	CodeWriteFailed       = "write_failed"
	CodeConnectionLost    = "connection_lost" // written, then the connection closed within the window
)

// --- monitor ---

type monitorRequest struct {
	Name     string          `json:"name"`
	URL      string          `json:"url"`
	Method   string          `json:"method"`
	PeriodMS json.RawMessage `json:"period_ms"`
	Args     json.RawMessage `json:"args"`
	// ID is sent by the vendor's example client; servers ignore it, so do we.
	ID json.RawMessage `json:"id"`
}

// MonitorReply is the reply to a successful monitor command.
type MonitorReply struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	PeriodMS int    `json:"period_ms"`
	// ClampedFrom is the requested period when it was outside 2..30000 ms.
	ClampedFrom *int64 `json:"clamped_from,omitempty"`
	Replaced    bool   `json:"replaced"`
}

// planMonitor validates a monitor command and returns the request, the
// normalized recipe (what is stored and sent as MONITOR) and the reply. It is
// pure: the fuzz target runs it without network.
func planMonitor(body []byte) (monitorRequest, Recipe, MonitorReply, error) {
	var req monitorRequest
	if err := connector.DecodeStrict(body, &req); err != nil {
		return req, Recipe{}, MonitorReply{}, err
	}
	if req.Name == "" {
		req.Name = DefaultMonitor
	}
	if !validName(req.Name) {
		return req, Recipe{}, MonitorReply{}, connector.Refuse(CodeInvalidName, "monitor name %q may hold only letters, digits, '-' and '_' (at most 64)", req.Name)
	}
	period, err := parsePeriodMS(req.PeriodMS)
	if err != nil {
		return req, Recipe{}, MonitorReply{}, err
	}
	rec, clamped, cerr := Recipe{URL: req.URL, Method: req.Method, PeriodMS: clampInt(period), Args: req.Args}.normalize()
	if cerr != nil {
		return req, Recipe{}, MonitorReply{}, cerr
	}
	reply := MonitorReply{Name: req.Name, URL: rec.URL, PeriodMS: rec.PeriodMS}
	if clamped || int64(rec.PeriodMS) != period {
		reply.ClampedFrom = &period
	}
	return req, rec, reply, nil
}

func (r *Robot) cmdMonitor(ctx context.Context, body []byte) (any, error) {
	req, rec, reply, err := planMonitor(body)
	if err != nil {
		return nil, err
	}

	r.cmdMu.Lock()
	defer r.cmdMu.Unlock()
	if err := r.putDesired(ctx, req.Name, rec, "command:"+CommandMonitor); err != nil {
		return nil, connector.Refuse(connector.CodeInternal, "cannot store the desired monitor: %v", err)
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return nil, connector.Refuse(connector.CodeShuttingDown, "robot %s is shutting down", r.cfg.Name)
	}
	prev, existed := r.desired[req.Name]
	r.desired[req.Name] = rec
	reply.Replaced = existed
	var w *monWaiter
	c := r.monitors[req.Name]
	if r.stopped {
		// A monitor command ends the pause of STOP session: every desired
		// monitor (and the control connection) comes back.
		r.stopped = false
		r.log.Info().Msg("resuming after STOP session")
	}
	if c == nil {
		c = newConn(r, req.Name, rec)
		w = c.waiter() // before the connection starts: its first ack must find it
		r.monitors[req.Name] = r.launchLocked(c)
		r.startAllLocked()
	} else {
		w = c.setRecipe(rec, true)
	}
	r.mu.Unlock()

	o, err := waitMonitor(ctx, c, w, r.common.AckTimeout)
	if err != nil {
		return nil, connector.Refuse(connector.CodeTimeout,
			"MONITOR %s not acknowledged within %s (%v); it is kept as desired state and applied on every (re)connect",
			req.Name, r.common.AckTimeout, err)
	}
	if o.err != nil {
		// The controller refused the recipe: do not keep retrying it.
		r.revertMonitor(ctx, req.Name, c, prev, existed, rec)
		return nil, o.err
	}
	return reply, nil
}

// revertMonitor undoes a monitor command the controller refused: the previous
// recipe comes back, or the new connection goes away. The caller holds
// r.cmdMu, so no other command changes the desired state meanwhile; r.mu is
// held only for the in-memory change, not across KV I/O (status reports and
// every other user of r.mu would wait up to the KV timeout).
func (r *Robot) revertMonitor(ctx context.Context, name string, c *conn, prev Recipe, existed bool, refused Recipe) {
	r.mu.Lock()
	if cur, ok := r.desired[name]; !ok || !recipeEqual(cur, refused) {
		r.mu.Unlock()
		return // changed meanwhile
	}
	if existed {
		r.desired[name] = prev
	} else {
		delete(r.desired, name)
		if r.monitors[name] == c {
			delete(r.monitors, name)
			c.cancel()
		}
	}
	r.mu.Unlock()

	if existed {
		c.setRecipe(prev, false)
		if err := r.putDesired(ctx, name, prev, "command:"+CommandMonitor); err != nil {
			r.log.Error().Err(err).Str("monitor", name).Msg("cannot restore the previous desired monitor")
		}
		return
	}
	if err := r.desiredKV.Delete(ctx, keyMonitorPrefix+name); err != nil {
		r.log.Error().Err(err).Str("monitor", name).Msg("cannot remove the refused monitor from KV")
	}
}

func recipeEqual(a, b Recipe) bool {
	return a.URL == b.URL && a.Method == b.Method && a.PeriodMS == b.PeriodMS && bytes.Equal(a.Args, b.Args)
}

func waitMonitor(ctx context.Context, c *conn, w *monWaiter, timeout time.Duration) (outcome, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case o := <-w.done:
		return o, nil
	case <-t.C:
	case <-ctx.Done():
	case <-c.done:
	}
	c.dropWaiter(w)
	select {
	case o := <-w.done: // answered just now
		return o, nil
	default:
	}
	state := c.r.connState(c.id)
	return outcome{}, errors.New("connection " + c.id + " is " + state)
}

func (r *Robot) connState(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.connStates[id]; ok {
		return s
	}
	return "closed"
}

// parsePeriodMS accepts a JSON integer; out-of-range values are clamped later.
func parsePeriodMS(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, connector.Refuse("missing_period_ms", "period_ms is required")
	}
	var n json.Number
	if raw[0] == '"' || json.Unmarshal(raw, &n) != nil {
		return 0, connector.Refuse("invalid_period", "period_ms must be an integer number of milliseconds")
	}
	f, ok := new(big.Float).SetString(n.String())
	if !ok || !f.IsInt() {
		return 0, connector.Refuse("invalid_period", "period_ms must be an integer number of milliseconds")
	}
	if i, acc := f.Int64(); acc == big.Exact {
		return i, nil
	}
	if f.Sign() < 0 {
		return -1 << 62, nil
	}
	return 1 << 62, nil
}

func clampInt(v int64) int {
	return int(min(max(v, MinPeriodMS-1), MaxPeriodMS+1))
}

// --- control ---

type controlRequest struct {
	URL    string          `json:"url"`
	Method string          `json:"method"`
	Body   json.RawMessage `json:"body"`
	Args   json.RawMessage `json:"args"`
}

// ControlReply is the reply to a CONTROL: the protocol answers nothing on
// success, so "written" is all a request/reply can confirm, after the
// control_err window passed quietly; a no-reply publish only queues it.
type ControlReply struct {
	Written  bool  `json:"written"`
	Queued   bool  `json:"queued,omitempty"`
	WindowMS int64 `json:"window_ms,omitempty"`
}

// controlLine validates a control command against the robot's allow-list
// and returns the one NDJSON line to write: re-encoded from the decoded
// request, so nothing of the request's own bytes but validated values reaches
// the controller. It is pure: the fuzz target runs it without network.
func controlLine(allow []string, robot string, body []byte) ([]byte, error) {
	var req controlRequest
	if err := connector.DecodeStrict(body, &req); err != nil {
		return nil, err
	}
	if err := checkControlURL(req.URL); err != nil {
		return nil, err
	}
	switch req.Method {
	case "POST", "PUT", "DELETE":
	case "":
		return nil, connector.Refuse("missing_method", "method is required: POST, PUT or DELETE")
	default:
		return nil, connector.Refuse("invalid_method", "CONTROL method must be POST, PUT or DELETE, not %q", req.Method)
	}
	payload, cerr := compactJSON(req.Body, true, "invalid_body", "body")
	if cerr != nil {
		return nil, cerr
	}
	args, cerr := compactJSON(req.Args, false, "invalid_args", "args")
	if cerr != nil {
		return nil, cerr
	}
	if !allowedURL(allow, req.URL) {
		return nil, connector.Refuse(CodeControlNotAllowed, "%s is not in the CONTROL allow-list of robot %s", req.URL, robot)
	}
	return encodeCmd(cmdControl, controlPayload{URL: req.URL, Method: req.Method, Args: args, Body: payload})
}

func (r *Robot) cmdControl(ctx context.Context, cmd connector.Command) (any, error) {
	if len(r.cfg.ControlAllow) == 0 {
		return nil, connector.Refuse(CodeControlDisabled, "CONTROL is disabled for robot %s: it has no allow-list (OPENSTREAM_CONTROL_ALLOW)", r.cfg.Name)
	}
	line, err := controlLine(r.cfg.ControlAllow, r.cfg.Name, cmd.Body)
	if err != nil {
		return nil, err
	}

	r.mu.Lock()
	stopped, closing, c := r.stopped, r.closing, r.control
	r.mu.Unlock()
	switch {
	case closing:
		return nil, connector.Refuse(connector.CodeShuttingDown, "robot %s is shutting down", r.cfg.Name)
	case stopped || c == nil:
		return nil, connector.Refuse(CodeSessionStopped, "robot %s was stopped by STOP session; send a monitor command to resume", r.cfg.Name)
	}
	s := c.session()
	if s == nil {
		return nil, connector.Refuse(CodeNotConnected, "the control connection of robot %s is %s", r.cfg.Name, r.connState(c.id))
	}

	if !cmd.WantsReply {
		// Trajectory streaming: queue it ahead of everything and return.
		if err := s.control(ctx, line, nil, nil); err != nil {
			return nil, connector.Refuse(CodeNotConnected, "CONTROL not queued: %v", err)
		}
		return ControlReply{Queued: true}, nil
	}
	w := &ctrlWaiter{done: make(chan outcome, 1)}
	written := make(chan error, 1)
	if err := s.control(ctx, line, w, written); err != nil {
		return nil, connector.Refuse(CodeNotConnected, "CONTROL not queued: %v", err)
	}
	select {
	case err := <-written:
		if err != nil {
			s.forgetCtrl(w)
			return nil, connector.Refuse(CodeWriteFailed, "CONTROL could not be written: %v", err)
		}
	case <-s.ended:
		s.forgetCtrl(w)
		return nil, connector.Refuse(CodeNotConnected, "the control connection closed before the CONTROL was written")
	case <-ctx.Done():
		s.forgetCtrl(w)
		return nil, connector.Refuse(connector.CodeTimeout, "CONTROL still queued when the command timed out")
	}
	t := time.NewTimer(r.common.ControlWindow)
	defer t.Stop()
	var o outcome
	select {
	case o = <-w.done:
	case <-t.C:
		s.forgetCtrl(w)
		select {
		case o = <-w.done:
		default:
			return ControlReply{Written: true, WindowMS: r.common.ControlWindow.Milliseconds()}, nil
		}
	}
	switch {
	case o.closed:
		return nil, connector.Refuse(CodeConnectionLost, "CONTROL was written, then the connection closed within %s; its outcome is unknown", r.common.ControlWindow)
	case o.err != nil:
		return nil, o.err
	}
	return ControlReply{Written: true, WindowMS: r.common.ControlWindow.Milliseconds()}, nil
}

// checkControlURL adds to the server's URL rules what an allow-list needs to
// be meaningful. Every segment is a non-empty run of RFC 3986 unreserved ASCII
// characters (letters, digits, '-', '.', '_', '~') and not only dots: so no
// query, fragment, percent escape ("%2e", "%2F"), empty segment ("//"), dot
// segment (".." and its "..;" variants), space, backslash or Unicode
// look-alike can make a URL that passes a pattern mean another path on the
// controller. Query parameters go in args.
func checkControlURL(u string) *connector.CommandError {
	if err := checkURL(u); err != nil {
		return err
	}
	if u == "/" {
		return nil
	}
	for _, seg := range strings.Split(u[1:], "/") {
		if seg == "" || strings.Trim(seg, ".") == "" {
			return connector.Refuse("invalid_url", "CONTROL url may not contain empty, '.' or '..' segments")
		}
		for i := 0; i < len(seg); i++ {
			if !unreserved(seg[i]) {
				return connector.Refuse("invalid_url",
					"CONTROL url segments may hold only ASCII letters, digits, '-', '.', '_' and '~' (no '?', '#', '%%' or other characters; use args for query parameters)")
			}
		}
	}
	return nil
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// allowedURL reports whether u matches a pattern of the allow-list (path.Match:
// '*' stays within one segment, matching is case-sensitive).
func allowedURL(allow []string, u string) bool {
	for _, p := range allow {
		if ok, _ := path.Match(p, u); ok {
			return true
		}
	}
	return false
}

// --- stop ---

type stopRequest struct {
	Target string `json:"target"`
	Name   string `json:"name"`
}

// StopReply is the reply to a successful stop command.
type StopReply struct {
	Target string `json:"target"`
	Name   string `json:"name,omitempty"`
	// Acked: the controller answered stop_ack. False when the connection was
	// down (nothing to stop) or the controller answered nothing_to_stop.
	Acked         bool   `json:"acked"`
	NothingToStop bool   `json:"nothing_to_stop,omitempty"`
	Connected     *bool  `json:"connected,omitempty"`
	Note          string `json:"note,omitempty"`
	// Connections reports, for target session, how each connection's STOP
	// session went (stop_ack, an error code, or "no stop_ack: ...").
	Connections map[string]string `json:"connections,omitempty"`
}

// planStop validates a stop command (pure, like planMonitor).
func planStop(body []byte) (stopRequest, error) {
	var req stopRequest
	if err := connector.DecodeStrict(body, &req); err != nil {
		return req, err
	}
	switch req.Target {
	case "":
		return req, connector.Refuse("missing_target", "target is required: monitor, control or session")
	case targetMonitor:
		if req.Name == "" {
			req.Name = DefaultMonitor
		}
		if !validName(req.Name) {
			return req, connector.Refuse(CodeInvalidName, "monitor name %q may hold only letters, digits, '-' and '_' (at most 64)", req.Name)
		}
		return req, nil
	case targetControl, targetSession:
		if req.Name != "" {
			return req, connector.Refuse("invalid_value", "name applies to target monitor only")
		}
		return req, nil
	}
	return req, connector.Refuse("invalid_target", "target must be monitor, control or session, not %q", req.Target)
}

func (r *Robot) cmdStop(ctx context.Context, body []byte) (any, error) {
	req, err := planStop(body)
	if err != nil {
		return nil, err
	}
	switch req.Target {
	case targetMonitor:
		return r.stopMonitor(ctx, req.Name)
	case targetControl:
		return r.stopControl(ctx)
	}
	return r.stopSession(ctx)
}

// stopMonitor sends STOP monitor on that monitor's connection, removes it from
// the desired state and closes the connection (STOP session first).
func (r *Robot) stopMonitor(ctx context.Context, name string) (any, error) {
	r.cmdMu.Lock()
	defer r.cmdMu.Unlock()
	r.mu.Lock()
	_, known := r.desired[name]
	c := r.monitors[name]
	r.mu.Unlock()
	if !known && c == nil {
		return nil, connector.Refuse(CodeUnknownMonitor, "robot %s has no monitor %q", r.cfg.Name, name)
	}
	reply := StopReply{Target: targetMonitor, Name: name}
	var upstreamErr error
	if s := c.sessionOrNil(); s != nil {
		o, err := r.stopOn(ctx, s, targetMonitor)
		switch {
		case err != nil:
			upstreamErr = connector.Refuse(connector.CodeTimeout, "%v; the monitor was removed anyway by closing its connection", err)
		case o.err != nil && o.err.Code == "nothing_to_stop":
			reply.NothingToStop = true
		case o.err != nil:
			upstreamErr = connector.Refuse(o.err.Code, "%s; the monitor was removed anyway by closing its connection", o.err.Message)
		default:
			reply.Acked = true
		}
	} else {
		f := false
		reply.Connected = &f
	}
	if err := r.desiredKV.Delete(ctx, keyMonitorPrefix+name); err != nil {
		return nil, connector.Refuse(connector.CodeInternal, "cannot remove the monitor from the desired state: %v", err)
	}
	r.mu.Lock()
	delete(r.desired, name)
	if c != nil && r.monitors[name] == c {
		delete(r.monitors, name)
	}
	r.mu.Unlock()
	if c != nil {
		c.cancel() // graceful: STOP session, then close
	}
	if upstreamErr != nil {
		return nil, upstreamErr
	}
	return reply, nil
}

func (c *conn) sessionOrNil() *session {
	if c == nil {
		return nil
	}
	return c.session()
}

func (r *Robot) stopControl(ctx context.Context) (any, error) {
	if len(r.cfg.ControlAllow) == 0 {
		return nil, connector.Refuse(CodeControlDisabled, "CONTROL is disabled for robot %s: it has no allow-list", r.cfg.Name)
	}
	r.mu.Lock()
	c := r.control
	r.mu.Unlock()
	s := c.sessionOrNil()
	if s == nil {
		return nil, connector.Refuse(CodeNotConnected, "the control connection of robot %s is not connected", r.cfg.Name)
	}
	o, err := r.stopOn(ctx, s, targetControl)
	switch {
	case err != nil:
		return nil, connector.Refuse(connector.CodeTimeout, "%v", err)
	case o.err != nil && o.err.Code == "nothing_to_stop":
		return StopReply{Target: targetControl, NothingToStop: true}, nil
	case o.err != nil:
		return nil, o.err
	}
	return StopReply{Target: targetControl, Acked: true}, nil
}

func (r *Robot) stopOn(ctx context.Context, s *session, target string) (outcome, error) {
	line, err := encodeCmd(cmdStop, stopPayload{Target: target})
	if err != nil {
		return outcome{}, err
	}
	p, err := s.request(ctx, pendStop, target, 0, line)
	if err != nil {
		return outcome{}, err
	}
	return s.awaitOrEnd(ctx, p, r.common.AckTimeout)
}

// stopSession ends every connection of the robot (STOP session each, then
// close) and leaves the robot idle, status "stopped", until a monitor command
// or a restart. The desired monitors stay in KV.
func (r *Robot) stopSession(ctx context.Context) (any, error) {
	r.cmdMu.Lock()
	defer r.cmdMu.Unlock()
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return nil, connector.Refuse(connector.CodeShuttingDown, "robot %s is shutting down", r.cfg.Name)
	}
	conns := r.allConnsLocked()
	r.stopped = true
	r.control = nil
	r.monitors = map[string]*conn{}
	for _, c := range conns {
		c.cancel()
	}
	r.mu.Unlock()
	reply := StopReply{Target: targetSession, Acked: true, Connections: map[string]string{}}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, connector.Refuse(connector.CodeTimeout, "connections still closing when the command timed out")
		}
		c.mu.Lock()
		out := c.stopOutcome
		c.mu.Unlock()
		if out == "" {
			out = "not_connected"
		}
		reply.Connections[c.id] = out
		reply.Acked = reply.Acked && out == evStopAck
	}
	r.host.Report(connector.Status{State: connector.StateStopped, Reason: "STOP session command; a monitor command resumes"})
	return reply, nil
}
