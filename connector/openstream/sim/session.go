package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/openstream/ndjson"
)

const (
	maxURLLen        = 2048
	minPeriodMS      = 2
	maxPeriodMS      = 30000
	idleWriteTimeout = 30 * time.Second // write deadline while unarmed; armed uses ArmedTimeout
	writeBufSize     = 32 << 10
)

const monitorAck = "{\"type\":\"monitor_ack\"}\n"

// inbound is one client line, parsed by the reader goroutine.
type inbound struct {
	raw        []byte
	cmd        string
	hasPayload bool
	fields     map[string]json.RawMessage // nil when the payload is absent or not an object
	code, msg  string                     // a framing/envelope error found while parsing
}

// monitor is a session's active MONITOR.
type monitor struct {
	info       MonitorInfo
	period     time.Duration
	get        getter
	id         []byte // compact JSON of the payload's id, for EchoID
	ticker     *time.Ticker
	ackPending bool // AckAfterData fault: ack once the first data is out
}

// session is one TCP connection. Its state is owned by the loop goroutine (run); the reader
// goroutine only parses lines and hands them over.
type session struct {
	s    *Server
	cfg  *Config
	id   uint64
	conn net.Conn
	log  zerolog.Logger

	in         chan inbound
	quit       chan struct{} // closed when the loop ends, to release the reader
	readerDone chan struct{}
	readErr    error                  // set by the reader before readerDone is closed
	aborted    atomic.Pointer[string] // reason, set by DropConnections
	dataLines  atomic.Int64

	bw       *bufio.Writer
	line     []byte        // scratch for the line being built
	res      []byte        // scratch for a REST result
	deadline time.Time     // current write deadline
	budget   time.Duration // the write timeout it was computed from

	handshaken    bool
	mon           *monitor
	controlActive bool
	lastActivity  time.Time // last meaningful command (or session start)
	lastData      time.Time // last data line written (or MONITOR start)
	wd            *time.Timer
	graceful      bool // the close should send its last line and linger
	garbageN      int
}

func newSession(s *Server, id uint64, c net.Conn, log zerolog.Logger) *session {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // many small lines at up to 500 Hz: latency matters more than packets
	}
	return &session{
		s:          s,
		cfg:        &s.cfg,
		id:         id,
		conn:       c,
		log:        log,
		in:         make(chan inbound, 16),
		quit:       make(chan struct{}),
		readerDone: make(chan struct{}),
		bw:         bufio.NewWriterSize(c, writeBufSize),
		line:       make([]byte, 0, 1024),
		res:        make([]byte, 0, 1024),
	}
}

// abort closes the connection abruptly from outside the loop.
func (ss *session) abort(reason string) {
	ss.aborted.Store(&reason)
	ss.conn.Close()
}

func (ss *session) run() {
	defer ss.s.sessWG.Done()
	go ss.readLoop()
	reason := ss.loop()
	if ss.graceful {
		ss.flush()
		ss.linger()
	}
	ss.conn.Close()
	close(ss.quit)
	<-ss.readerDone
	if ss.mon != nil {
		ss.mon.ticker.Stop()
	}
	if ss.wd != nil {
		ss.wd.Stop()
	}
	if ss.controlActive {
		ss.s.robot.hold(time.Now()) // the controlling client is gone: do not keep moving
	}
	if r := ss.aborted.Load(); r != nil {
		reason = *r
	}
	ss.s.removeSession(ss.id)
	ss.log.Info().Str("reason", reason).Int64("data_lines", ss.dataLines.Load()).Msg("session closed")
}

// linger half-closes and waits (bounded) for the client to close, discarding its input.
func (ss *session) linger() {
	if cw, ok := ss.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	ss.conn.SetReadDeadline(time.Now().Add(ss.cfg.LingerTimeout))
	for {
		select {
		case <-ss.in:
		case <-ss.readerDone:
			return
		case <-ss.s.ctx.Done():
			return
		}
	}
}

func (ss *session) readLoop() {
	defer close(ss.readerDone)
	r := ndjson.NewReader(ss.conn, ss.cfg.MaxLine)
	for {
		line, err := r.Next()
		var in inbound
		var tl *ndjson.LineTooLongError
		switch {
		case err == nil:
			in = parseLine(line)
		case errors.As(err, &tl):
			in = inbound{raw: tl.Prefix, code: ErrRxBufOverflow,
				msg: fmt.Sprintf("line longer than %d bytes discarded", ss.cfg.MaxLine)}
		default:
			ss.readErr = err
			return
		}
		select {
		case ss.in <- in:
		case <-ss.quit:
			return
		}
	}
}

// parseLine checks the envelope {"cmd":string,"payload":object}.
func parseLine(line []byte) inbound {
	in := inbound{raw: bytes.Clone(line)}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(in.raw, &top); err != nil || top == nil {
		in.code, in.msg = ErrInvalidNDJSON, "line is not valid JSON"
		if err == nil || json.Valid(in.raw) {
			in.msg = "line is not a JSON object"
		}
		return in
	}
	c, ok := top["cmd"]
	if !ok {
		in.code, in.msg = ErrMissingField, "cmd is required"
		return in
	}
	if err := json.Unmarshal(c, &in.cmd); err != nil {
		in.code, in.msg = ErrInvalidType, "cmd must be a string"
		return in
	}
	var p json.RawMessage
	if p, in.hasPayload = top["payload"]; in.hasPayload {
		if p = bytes.TrimSpace(p); len(p) > 0 && p[0] == '{' {
			json.Unmarshal(p, &in.fields) // already validated as part of the line
		}
	}
	return in
}

func (ss *session) loop() string {
	f := ss.cfg.Faults
	now := time.Now()
	ss.lastActivity = now
	ss.wd = time.NewTimer(time.Hour)
	ss.resetWatchdog(now)
	var dropC, garbageC <-chan time.Time
	if f.DropAfter > 0 {
		t := time.NewTimer(f.DropAfter)
		defer t.Stop()
		dropC = t.C
	}
	if f.GarbageEvery > 0 {
		t := time.NewTicker(f.GarbageEvery)
		defer t.Stop()
		garbageC = t.C
	}
	for {
		var tickC <-chan time.Time
		if ss.mon != nil {
			tickC = ss.mon.ticker.C
		}
		var end string
		select {
		case <-ss.s.ctx.Done():
			return "server closed"
		case <-ss.readerDone:
			// Lines the reader queued before the end still count (e.g. STOP then close).
			for len(ss.in) > 0 && end == "" {
				end = ss.handle(<-ss.in)
			}
			ss.flush()
			if end != "" {
				return end
			}
			return fmt.Sprintf("read: %v", ss.readErr)
		case in := <-ss.in:
			end = ss.handle(in)
		case <-tickC:
			end = ss.tick()
		case <-ss.wd.C:
			end = ss.watchdog()
		case <-dropC:
			return "fault: drop after " + f.DropAfter.String()
		case <-garbageC:
			ss.garbage()
		}
		if n := ss.dataLines.Load(); f.DropEveryLines > 0 && n >= int64(f.DropEveryLines) {
			ss.flush()
			ss.conn.Close() // abrupt: no error line
			return fmt.Sprintf("fault: drop after %d data lines", n)
		}
		if err := ss.flush(); err != nil {
			return fmt.Sprintf("write: %v", err)
		}
		if end != "" {
			return end
		}
	}
}

// emit queues one line (which must end in "\n"), keeping a write deadline in place so that a
// client that stops reading cannot block the session forever.
func (ss *session) emit(b []byte) {
	now := time.Now()
	wt := idleWriteTimeout
	if ss.mon != nil && ss.cfg.ArmedTimeout > 0 {
		wt = ss.cfg.ArmedTimeout
	}
	// Refresh only when a quarter of the budget is used (a deadline per line would be waste), or
	// at once when arming/disarming changed the budget.
	if ss.deadline.Sub(now) < wt*3/4 || wt != ss.budget {
		ss.deadline, ss.budget = now.Add(wt), wt
		ss.conn.SetWriteDeadline(ss.deadline)
	}
	ss.bw.Write(b) // errors are sticky in bufio and surface at flush
}

func (ss *session) flush() error {
	if ss.bw.Buffered() == 0 {
		return nil
	}
	return ss.bw.Flush()
}

func (ss *session) emitError(code, msg string) {
	ss.line = appendError(ss.line[:0], code, msg, hint(code))
	ss.emit(ss.line)
}

func (ss *session) handle(in inbound) string {
	now := time.Now()
	var code, msg, end string
	switch {
	case in.code != "":
		code, msg = in.code, in.msg
	case in.cmd == "HANDSHAKE":
		if code, msg = payloadCheck(in); code == "" {
			code, msg = ss.handshake(in.fields)
		}
	case in.cmd == "MONITOR" || in.cmd == "CONTROL" || in.cmd == "STOP":
		if !ss.handshaken {
			code, msg = ErrHandshakeRequired, in.cmd+" before a successful HANDSHAKE"
		} else if code, msg = payloadCheck(in); code == "" {
			switch in.cmd {
			case "MONITOR":
				code, msg = ss.monitor(in.fields, now)
			case "CONTROL":
				code, msg = ss.control(in.fields, now)
			default:
				code, msg, end = ss.stop(in.fields, now)
			}
		}
	default:
		code, msg = ErrInvalidCmd, fmt.Sprintf("unknown cmd %q", in.cmd)
	}
	if meaningful(code) {
		ss.lastActivity = now
	}
	if code != "" && code != "control_err" {
		ss.emitError(code, msg)
	}
	ss.log.Debug().Str("cmd", in.cmd).Str("result", code).Bytes("line", in.raw).Msg("command")
	ss.s.record(Command{Conn: ss.id, Cmd: in.cmd, Raw: in.raw, At: now, Err: code})
	ss.resetWatchdog(now)
	return end
}

// meaningful reports whether a command's outcome refreshes the watchdog. Malformed or invalid
// lines, commands refused before execution, and CONTROL whose REST call failed (the vendor: "a
// successful CONTROL refreshes") do not. Everything else is a valid command the server acted on,
// even if the answer is an error such as nothing_to_stop.
func meaningful(code string) bool {
	switch code {
	case ErrInvalidNDJSON, ErrRxBufOverflow, ErrHandshakeRequired, ErrInvalidCmd,
		ErrInvalidPayload, ErrMissingField, ErrInvalidType, ErrInvalidValue,
		ErrMissingMajor, ErrInvalidMajorType, ErrInvalidVersion, ErrVersionMismatch,
		ErrMissingURL, ErrInvalidURL, ErrURLTooLong, ErrMissingMethod,
		ErrInvalidMethod, ErrMissingPeriodMS, ErrInvalidPeriod, ErrInvalidArgs,
		ErrInvalidBody, ErrMissingTarget, ErrInvalidTarget, ErrMethodNotAllowed,
		ErrControlBusy, "control_err":
		return false
	}
	return true
}

func payloadCheck(in inbound) (string, string) {
	if !in.hasPayload {
		return ErrMissingField, "payload is required"
	}
	if in.fields == nil {
		return ErrInvalidPayload, "payload must be a JSON object"
	}
	return "", ""
}

// intKind classifies a JSON value expected to be an integer.
type intKind int

const (
	intOK intKind = iota
	intNotNumber
	intNotInteger // a number with a fraction or exponent
	intTooBig
	intTooSmall
)

func parseInt(raw json.RawMessage) (int64, intKind) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, intNotNumber
	}
	if bytes.ContainsAny(raw, ".eE") {
		return 0, intNotInteger
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		if raw[0] == '-' {
			return 0, intTooSmall
		}
		return 0, intTooBig
	}
	return n, intOK
}

func (ss *session) handshake(p map[string]json.RawMessage) (string, string) {
	raw, ok := p["major"]
	if !ok {
		return ErrMissingMajor, "major is required"
	}
	major, kind := parseInt(raw)
	switch {
	case kind == intNotNumber || kind == intNotInteger:
		return ErrInvalidMajorType, "major must be an integer"
	case kind == intTooSmall || major < 0:
		return ErrInvalidVersion, "major must be >= 0"
	case kind == intTooBig || major != int64(ss.s.major):
		return ErrVersionMismatch, fmt.Sprintf("server protocol is %s (MAJOR %d), client sent major %s",
			ss.cfg.Version, ss.s.major, bytes.TrimSpace(raw))
	case ss.cfg.Faults.RejectHandshake:
		return ErrHandshakeRejected, "handshake rejected"
	case ss.mon != nil || ss.controlActive:
		return ErrBusySessionActive, "a MONITOR or CONTROL is active in this session"
	}
	ss.handshaken = true
	ss.line = append(ss.line[:0], `{"type":"handshake_ack","ok":true,"version":`...)
	ss.line = appendString(ss.line, ss.cfg.Version)
	ss.line = append(ss.line, "}\n"...)
	ss.emit(ss.line)
	ss.s.updateInfo(ss.id, func(i *SessionInfo) { i.Handshaken = true })
	return "", ""
}

// checkURL validates a MONITOR/CONTROL url and splits off an inline query.
func checkURL(p map[string]json.RawMessage) (path string, q map[string]string, code, msg string) {
	raw, ok := p["url"]
	if !ok {
		return "", nil, ErrMissingURL, "url is required"
	}
	var u string
	if json.Unmarshal(raw, &u) != nil {
		return "", nil, ErrInvalidURL, "url must be a string"
	}
	if !strings.HasPrefix(u, "/") || strings.IndexFunc(u, unicode.IsSpace) >= 0 {
		return "", nil, ErrInvalidURL, "url must start with / and contain no spaces"
	}
	if len(u) > maxURLLen {
		return "", nil, ErrURLTooLong, fmt.Sprintf("url is %d bytes, at most %d", len(u), maxURLLen)
	}
	q = map[string]string{}
	path, rawQuery, _ := strings.Cut(u, "?")
	if rawQuery != "" {
		vals, err := url.ParseQuery(rawQuery)
		if err != nil {
			return "", nil, ErrInvalidURL, "bad query string: " + err.Error()
		}
		for k, v := range vals {
			q[k] = v[0]
		}
	}
	return path, q, "", ""
}

// checkArgs merges the args object (query parameters) into q.
func checkArgs(p map[string]json.RawMessage, q map[string]string) (string, string) {
	raw, ok := p["args"]
	if !ok {
		return "", ""
	}
	var args map[string]json.RawMessage
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &args) != nil {
		return ErrInvalidArgs, "args must be a JSON object"
	}
	for k, v := range args {
		s, ok := queryString(v)
		if !ok {
			return ErrInvalidValue, fmt.Sprintf("args.%s must be a string, number or boolean", k)
		}
		q[k] = s
	}
	return "", ""
}

func (ss *session) monitor(p map[string]json.RawMessage, now time.Time) (string, string) {
	path, q, code, msg := checkURL(p)
	if code != "" {
		return code, msg
	}
	raw, ok := p["method"]
	if !ok {
		return ErrMissingMethod, "method is required"
	}
	var method string
	if json.Unmarshal(raw, &method) != nil || method != http.MethodGet {
		return ErrInvalidMethod, "MONITOR method must be \"GET\""
	}
	raw, ok = p["period_ms"]
	if !ok {
		return ErrMissingPeriodMS, "period_ms is required"
	}
	period, kind := parseInt(raw)
	switch kind {
	case intNotNumber, intNotInteger:
		return ErrInvalidPeriod, "period_ms must be an integer"
	case intTooBig:
		period = maxPeriodMS
	case intTooSmall:
		period = minPeriodMS
	}
	period = min(max(period, minPeriodMS), maxPeriodMS) // out of range is clamped, not refused
	if code, msg := checkArgs(p, q); code != "" {
		return code, msg
	}
	if ss.cfg.MonitorExclusive && ss.mon != nil {
		return ErrMonitorAlreadyActive, "a MONITOR is already active; STOP it first"
	}
	m := &monitor{
		info:       MonitorInfo{URL: path, PeriodMS: int(period), Args: q, Started: now},
		period:     time.Duration(period) * time.Millisecond,
		get:        ss.s.compileGet(path, q),
		ackPending: ss.cfg.Faults.AckAfterData,
	}
	if id, ok := p["id"]; ok && ss.cfg.EchoID {
		var b bytes.Buffer
		if json.Compact(&b, id) == nil {
			m.id = b.Bytes()
		}
	}
	if ss.mon != nil {
		ss.mon.ticker.Stop() // replaced: one MONITOR per connection
	}
	ss.mon = m
	ss.lastData = now
	if !m.ackPending {
		ss.emit([]byte(monitorAck))
	}
	ss.writeData() // the first data right away, then one per period
	m.ticker = time.NewTicker(m.period)
	info := m.info
	ss.s.updateInfo(ss.id, func(i *SessionInfo) { i.Monitor = &info })
	return "", ""
}

// tick sends one data event unless the stall fault is holding the stream.
func (ss *session) tick() string {
	f := ss.cfg.Faults
	if f.StallEvery > 0 && f.StallFor > 0 {
		if time.Since(ss.mon.info.Started)%(f.StallEvery+f.StallFor) >= f.StallEvery {
			return ""
		}
	}
	ss.writeData()
	return ""
}

// writeData builds and queues one data event without allocating.
func (ss *session) writeData() int64 {
	m := ss.mon
	t0 := time.Now()
	res, status := m.get(ss.res[:0], t0)
	ss.res = res
	svc := time.Since(t0)
	b := append(ss.line[:0], `{"type":"data"`...)
	if m.id != nil {
		b = append(b, `,"id":`...)
		b = append(b, m.id...)
	}
	b = append(b, `,"ts":`...)
	if ss.cfg.TSClock == TSMonitor {
		b = strconv.AppendInt(b, t0.Sub(m.info.Started).Milliseconds(), 10)
	} else {
		b = strconv.AppendInt(b, t0.UnixMilli(), 10)
	}
	b = append(b, `,"svc_dur_ms":`...)
	b = strconv.AppendFloat(b, float64(svc)/float64(time.Millisecond), 'f', 6, 64)
	if len(res) > 0 {
		b = append(b, `,"result":`...)
		b = append(b, res...)
	} else {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(status), 10)
	}
	b = append(b, "}\n"...)
	ss.line = b
	ss.emit(b)
	ss.lastData = t0
	if m.ackPending {
		m.ackPending = false
		ss.emit([]byte(monitorAck))
	}
	return ss.dataLines.Add(1)
}

// nonControlMethod reports real HTTP methods that CONTROL does not allow (method_not_allowed);
// anything else unknown is invalid_method.
func nonControlMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return true
	}
	return false
}

func (ss *session) control(p map[string]json.RawMessage, now time.Time) (string, string) {
	path, q, code, msg := checkURL(p)
	if code != "" {
		return code, msg
	}
	raw, ok := p["method"]
	if !ok {
		return ErrMissingMethod, "method is required"
	}
	var method string
	if json.Unmarshal(raw, &method) != nil {
		return ErrInvalidMethod, "method must be a string"
	}
	switch {
	case method == http.MethodPost || method == http.MethodPut || method == http.MethodDelete:
	case nonControlMethod(method):
		return ErrMethodNotAllowed, method + " is not allowed for CONTROL; use POST, PUT or DELETE"
	default:
		return ErrInvalidMethod, fmt.Sprintf("unknown method %q", method)
	}
	if code, msg := checkArgs(p, q); code != "" {
		return code, msg
	}
	var body json.RawMessage
	if raw, ok := p["body"]; ok {
		if raw = bytes.TrimSpace(raw); len(raw) == 0 || (raw[0] != '{' && raw[0] != '[') {
			return ErrInvalidBody, "body must be a JSON object or array"
		}
		body = raw
	}
	if ss.cfg.Faults.ControlBusy {
		return ErrControlBusy, "controller is busy with another control"
	}
	status, errBody := ss.s.control(now, method, path, body)
	if status >= 200 && status < 300 {
		if !ss.controlActive {
			ss.controlActive = true
			ss.s.updateInfo(ss.id, func(i *SessionInfo) { i.ControlActive = true })
		}
		return "", "" // success: no reply line
	}
	b := append(ss.line[:0], `{"type":"control_err","status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"body":`...)
	if len(errBody) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, errBody...)
	}
	ss.line = append(b, "}\n"...)
	ss.emit(ss.line)
	return "control_err", ""
}

func (ss *session) stop(p map[string]json.RawMessage, now time.Time) (code, msg, end string) {
	raw, ok := p["target"]
	if !ok {
		return ErrMissingTarget, "target is required", ""
	}
	var target string
	json.Unmarshal(raw, &target)
	if target != "session" && target != "control" && target != "monitor" {
		return ErrInvalidTarget, fmt.Sprintf("invalid target %s", bytes.TrimSpace(raw)), ""
	}
	if ss.cfg.Faults.StopFailed {
		return ErrStopFailed, "failed to stop " + target, ""
	}
	switch target {
	case "monitor":
		if ss.mon == nil && !ss.cfg.Faults.StopAckIdle {
			return ErrNothingToStop, "no active MONITOR", ""
		}
		ss.stopMonitor()
	case "control":
		if !ss.controlActive && !ss.cfg.Faults.StopAckIdle {
			return ErrNothingToStop, "no active CONTROL", ""
		}
		ss.stopControl(now)
	case "session":
		ss.stopMonitor()
		ss.stopControl(now)
		ss.graceful = true
		end = "STOP session"
	}
	ss.line = append(ss.line[:0], `{"type":"stop_ack","target":`...)
	ss.line = appendString(ss.line, target)
	ss.line = append(ss.line, "}\n"...)
	ss.emit(ss.line)
	return "", "", end
}

func (ss *session) stopMonitor() {
	if ss.mon == nil {
		return
	}
	ss.mon.ticker.Stop()
	ss.mon = nil
	ss.s.updateInfo(ss.id, func(i *SessionInfo) { i.Monitor = nil })
}

func (ss *session) stopControl(now time.Time) {
	if !ss.controlActive {
		return
	}
	ss.controlActive = false
	ss.s.robot.hold(now)
	ss.s.updateInfo(ss.id, func(i *SessionInfo) { i.ControlActive = false })
}

// watchdogDeadline is when the session times out, if ever (see the package documentation).
func (ss *session) watchdogDeadline() (time.Time, string, bool) {
	if ss.mon == nil {
		if ss.cfg.IdleTimeout < 0 {
			return time.Time{}, "", false
		}
		return ss.lastActivity.Add(ss.cfg.IdleTimeout), "no meaningful command for " + ss.cfg.IdleTimeout.String(), true
	}
	d := ss.cfg.ArmedTimeout
	if d < 0 {
		return time.Time{}, "", false
	}
	dl, why := ss.lastData.Add(d), "MONITOR stream stalled for "+d.String()
	if a := ss.lastActivity.Add(d); ss.cfg.Watchdog == WatchdogStrict && a.Before(dl) {
		dl, why = a, "no meaningful command for "+d.String()+" while MONITOR is active"
	}
	return dl, why, true
}

func (ss *session) resetWatchdog(now time.Time) {
	dl, _, ok := ss.watchdogDeadline()
	if !ok {
		ss.wd.Stop()
		return
	}
	ss.wd.Reset(max(dl.Sub(now), 0))
}

func (ss *session) watchdog() string {
	now := time.Now()
	dl, why, ok := ss.watchdogDeadline()
	if !ok {
		return ""
	}
	if now.Before(dl) {
		ss.wd.Reset(dl.Sub(now))
		return ""
	}
	ss.stopMonitor()
	ss.emitError(ErrSessionTimeout, why)
	ss.graceful = true
	return "session_timeout: " + why
}

// garbageKinds is how many malformed lines the garbage fault cycles through.
const garbageKinds = 6

// garbageLine returns malformed line i (mod garbageKinds).
func garbageLine(i int) []byte {
	switch i % garbageKinds {
	case 0:
		return []byte("this is not json\n")
	case 1:
		return []byte("{\"type\":\"data\",\"ts\":\n") // truncated object
	case 2:
		return []byte("[1,2,3]\n") // JSON, not an object
	case 3:
		return []byte("\xff\xfe\x00 binary garbage\n") // invalid UTF-8 and a NUL
	case 4:
		return []byte("{\"type\":\"data\" \"ts\":1}\n") // syntax error
	default:
		return []byte("{\"neither\":\"type nor error\"}\n") // an object that is no known message
	}
}

func (ss *session) garbage() {
	ss.emit(garbageLine(ss.garbageN))
	ss.garbageN++
}
