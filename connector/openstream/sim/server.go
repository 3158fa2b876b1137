// Package sim is a simulator of the Hyundai Robotics Hi6 "Open Stream" server (PROTOCOLS.md
// section 2): a TCP server speaking NDJSON, one connection per session, with HANDSHAKE, MONITOR,
// CONTROL and STOP, the watchdog, and a 6-axis arm shared by all connections whose joints follow
// CONTROL trajectory points and show up in MONITOR data. It serves tests, the demo and
// docker-compose, and the vendor's example Python client runs against it unchanged.
//
// # Behaviour where the vendor's documents leave a choice
//
//   - Meaningful activity (watchdog): a well-formed, valid command that the server acted on,
//     whatever the answer (acks, a silent CONTROL success, but also nothing_to_stop,
//     busy_session_active, monitor_already_active). Not meaningful: garbage, oversized lines,
//     envelope and payload validation errors, handshake_required, and a CONTROL whose REST call
//     failed (control_err) or was refused (control_busy) — the vendor says "a successful CONTROL
//     refreshes". So a client cannot keep a session alive with junk, but a harmless valid command
//     (re-sending the active MONITOR, STOP control) works as a keepalive.
//   - Watchdog, unarmed (no MONITOR): no meaningful activity for IdleTimeout (default 180 s).
//     Armed (MONITOR active), rule "strict" (default): no meaningful activity for ArmedTimeout
//     (default 5 s), or no data line delivered for ArmedTimeout. Rule "stream": only the latter.
//     A timeout sends {"error":"session_timeout",...} and closes. A client that stops reading is
//     also caught by the write deadline (ArmedTimeout while armed).
//   - MONITOR of an unknown URL is accepted (the service is resolved on each call, as a REST
//     proxy would) and streams data with "status":404 and no result; a POST-only URL gives 405.
//     The first data event is sent at once, then one per period.
//   - CONTROL: method GET/HEAD/PATCH/OPTIONS/CONNECT/TRACE (real HTTP methods CONTROL does not
//     allow) gives method_not_allowed; anything else that is not POST/PUT/DELETE gives
//     invalid_method. A failing REST call gives control_err with the REST error body, or
//     "body":null when the REST answer has no body (404 unknown path, 405 wrong method).
//     A "CONTROL is active" from the first successful CONTROL until STOP control/session; while
//     active, HANDSHAKE gets busy_session_active and STOP control clears the queued trajectory.
//   - The arm is shared by all sessions. Each joint_traject_insert_point is reached "interval"
//     seconds after the previous one, linearly interpolated; a point inserted while idle starts
//     from the current position. joint_traject_init, POST stop, motor_off, STOP control and the
//     controlling session's disconnect drop the queued points (the arm holds where it is).
//   - Connections beyond MaxConns get a handshake_rejected line at once and are closed.
//   - Server-initiated closes (STOP session, session_timeout, refused connection) send the last
//     line, half-close, and wait up to LingerTimeout for the client's FIN so the line is not lost
//     to a TCP reset. Fault drops are abrupt closes.
//
// # Flags (Config.RegisterFlags)
//
// -addr, -version, -max-line, -idle-timeout, -armed-timeout, -watchdog, -linger, -ts, -echo-id,
// -monitor-exclusive, -motor-off, -http-addr, -max-conns, -record-limit, and the faults
// -fault-drop-after, -fault-drop-every, -fault-garbage-every, -fault-stall-every,
// -fault-stall-for, -fault-ack-after-data, -fault-reject-handshake, -fault-control-busy,
// -fault-stop-failed, -fault-stop-ack-idle.
package sim

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// ErrServerClosed is returned by Start and Serve after Close.
var ErrServerClosed = errors.New("sim: server closed")

// Command is one line received from a client.
type Command struct {
	Conn uint64    // connection number, 1 for the first accepted connection
	Cmd  string    // the "cmd" field, "" when the line had none
	Raw  []byte    // the line as received, without "\n" (for oversized lines: its first bytes)
	At   time.Time // when it was handled
	// Err is the error code the server answered with ("control_err" for a failed CONTROL),
	// "" when the command succeeded.
	Err string
}

// MonitorInfo describes a session's active MONITOR.
type MonitorInfo struct {
	URL      string
	PeriodMS int // after clamping
	Args     map[string]string
	Started  time.Time
}

// SessionInfo is a snapshot of one open connection.
type SessionInfo struct {
	Conn          uint64
	Remote        string
	Handshaken    bool
	Monitor       *MonitorInfo // nil when no MONITOR is active
	ControlActive bool
	DataLines     int64 // data events sent so far
}

// Server simulates one robot controller. All methods are safe for concurrent use.
type Server struct {
	cfg   Config
	log   zerolog.Logger
	major int
	robot *robot

	ctx    context.Context // cancelled by Close; sessions watch it
	cancel context.CancelFunc

	sessWG   sync.WaitGroup // session and refusal goroutines
	acceptWG sync.WaitGroup // accept loops and the HTTP server
	closeMu  sync.Once
	nextConn atomic.Uint64

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
	httpSrv   *http.Server
	httpAddr  string
	sessions  map[uint64]*session
	infos     map[uint64]*SessionInfo
	received  []Command
	changed   chan struct{} // closed and replaced on every state change
}

// New returns a server; zero Config fields take their defaults (see DefaultConfig).
func New(cfg Config, log zerolog.Logger) *Server {
	cfg = cfg.withDefaults()
	major, _ := parseMajor(cfg.Version)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:      cfg,
		log:      log.With().Str("component", "openstream-sim").Logger(),
		major:    major,
		robot:    newRobot(!cfg.MotorOffAtStart),
		ctx:      ctx,
		cancel:   cancel,
		sessions: map[uint64]*session{},
		infos:    map[uint64]*SessionInfo{},
		changed:  make(chan struct{}),
	}
}

// Config returns the effective configuration (defaults applied).
func (s *Server) Config() Config { return s.cfg }

// Start listens on addr (host:port; port 0 picks one; "" means Config.Addr), serves in the
// background and returns the bound address. With Config.HTTPAddr it also starts the REST HTTP
// server.
func (s *Server) Start(addr string) (string, error) {
	if addr == "" {
		addr = s.cfg.Addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	if err := s.startHTTP(); err != nil {
		ln.Close()
		return "", err
	}
	if !s.addListener(ln) {
		ln.Close()
		return "", ErrServerClosed
	}
	go s.acceptLoop(ln)
	return ln.Addr().String(), nil
}

// Serve accepts connections on ln until ctx ends or Close is called; either way it shuts the
// whole server down (all sessions closed) before returning nil. With Config.HTTPAddr it also
// starts the REST HTTP server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.startHTTP(); err != nil {
		ln.Close()
		return err
	}
	if !s.addListener(ln) {
		ln.Close()
		return ErrServerClosed
	}
	stop := context.AfterFunc(ctx, s.shutdown)
	defer stop()
	err := s.acceptLoop(ln)
	s.shutdown()
	s.sessWG.Wait()
	return err
}

func (s *Server) addListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners = append(s.listeners, ln)
	s.acceptWG.Add(1)
	return true
}

// acceptLoop runs until the listener fails; errors after Close are not errors.
func (s *Server) acceptLoop(ln net.Listener) error {
	defer s.acceptWG.Done()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Transient failures (e.g. too many open files): back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn().Err(err).Dur("backoff_ms", backoff).Msg("accept failed")
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		s.accept(c)
	}
}

func (s *Server) accept(c net.Conn) {
	id := s.nextConn.Add(1)
	log := s.log.With().Uint64("conn", id).Str("remote", c.RemoteAddr().String()).Logger()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	if s.cfg.MaxConns > 0 && len(s.sessions) >= s.cfg.MaxConns {
		s.sessWG.Add(1)
		s.mu.Unlock()
		log.Warn().Int("max_conns", s.cfg.MaxConns).Msg("connection refused: too many sessions")
		go s.refuse(c)
		s.notify()
		return
	}
	ss := newSession(s, id, c, log)
	s.sessions[id] = ss
	s.infos[id] = &SessionInfo{Conn: id, Remote: c.RemoteAddr().String()}
	s.sessWG.Add(1)
	s.mu.Unlock()
	log.Info().Msg("session opened")
	s.notify()
	go ss.run()
}

// refuse answers a connection beyond MaxConns with one error line and closes it.
func (s *Server) refuse(c net.Conn) {
	defer s.sessWG.Done()
	line := appendError(nil, ErrHandshakeRejected, "maximum number of sessions reached", hint(ErrHandshakeRejected))
	c.SetWriteDeadline(time.Now().Add(s.cfg.LingerTimeout))
	c.Write(line)
	lingerClose(s.ctx, c, s.cfg.LingerTimeout)
}

// lingerClose half-closes c and waits (bounded) for the peer's FIN before closing, so that the
// last line sent is not destroyed by a reset caused by unread input.
func lingerClose(ctx context.Context, c net.Conn, d time.Duration) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(d))
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	c.Close()
}

func (s *Server) startHTTP() error {
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if s.httpSrv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return err
	}
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, ErrorLog: nil}
	s.httpAddr = ln.Addr().String()
	s.acceptWG.Add(1)
	go func() {
		defer s.acceptWG.Done()
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("http server failed")
		}
	}()
	s.log.Info().Str("addr", s.httpAddr).Msg("REST HTTP server listening")
	return nil
}

// Addr returns the address of the first listener ("" before Start/Serve).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.listeners) == 0 {
		return ""
	}
	return s.listeners[0].Addr().String()
}

// HTTPAddr returns the bound address of the REST HTTP server ("" when not enabled).
func (s *Server) HTTPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.httpAddr
}

// shutdown stops accepting and tells every session to end; it does not wait.
func (s *Server) shutdown() {
	s.closeMu.Do(func() {
		s.mu.Lock()
		s.closed = true
		lns := s.listeners
		hs := s.httpSrv
		list := make([]*session, 0, len(s.sessions))
		for _, ss := range s.sessions {
			list = append(list, ss)
		}
		s.mu.Unlock()
		s.cancel()
		for _, ln := range lns {
			ln.Close()
		}
		// Closing the sockets also releases a session blocked writing to a client that does not
		// read; the context alone would wait for the write deadline.
		for _, ss := range list {
			ss.abort("server closed")
		}
		if hs != nil {
			hs.Close()
		}
		s.notify()
	})
}

// Close stops the server and waits until every goroutine it started has returned.
func (s *Server) Close() error {
	s.shutdown()
	s.sessWG.Wait()
	s.acceptWG.Wait()
	return nil
}

// DropConnections closes every open connection abruptly, as a network failure would.
func (s *Server) DropConnections() {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	for _, ss := range list {
		ss.abort("dropped by test")
	}
}

// Connections returns how many connections were accepted in total (refused ones included).
func (s *Server) Connections() int { return int(s.nextConn.Load()) }

// Active returns how many sessions are open now.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Sessions returns a snapshot of the open sessions, in connection order.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionInfo, 0, len(s.infos))
	for id, in := range s.infos {
		c := *in
		if in.Monitor != nil {
			m := *in.Monitor
			c.Monitor = &m
		}
		c.DataLines = s.sessions[id].dataLines.Load()
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Compare(a.Conn, b.Conn) })
	return out
}

// Joints returns the arm's joint positions (deg) now.
func (s *Server) Joints() [Axes]float64 { return s.robot.joints(time.Now()) }

// MotorOn reports whether the motors are on.
func (s *Server) MotorOn() bool { return s.robot.motor() }

// Running reports whether the robot was started (POST start) and not stopped since.
func (s *Server) Running() bool {
	s.robot.mu.Lock()
	defer s.robot.mu.Unlock()
	return s.robot.running
}

// TrajectoryPoints returns how many trajectory points CONTROL has inserted in total.
func (s *Server) TrajectoryPoints() int64 {
	s.robot.mu.Lock()
	defer s.robot.mu.Unlock()
	return s.robot.inserted
}

// Received returns the commands received so far (the newest RecordLimit of them), oldest first.
func (s *Server) Received() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.received
	if l := s.cfg.RecordLimit; l > 0 && len(r) > l {
		r = r[len(r)-l:]
	}
	return append([]Command(nil), r...)
}

func (s *Server) record(c Command) {
	s.mu.Lock()
	s.received = append(s.received, c)
	if l := s.cfg.RecordLimit; l > 0 && len(s.received) >= 2*l {
		s.received = append([]Command(nil), s.received[len(s.received)-l:]...)
	}
	s.mu.Unlock()
	s.notify()
}

// notify wakes WaitFor callers.
func (s *Server) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// WaitFor blocks until cond returns true or ctx ends. cond is re-evaluated on every server event
// (command handled, session opened/closed or changed) and every few milliseconds, since the arm
// and data counters change without events. cond may call the Server's methods.
func (s *Server) WaitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return nil
		}
		t.Reset(5 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitCommand waits for a received command matching match (already received ones included) and
// returns the first match.
func (s *Server) WaitCommand(ctx context.Context, match func(Command) bool) (Command, error) {
	var found Command
	err := s.WaitFor(ctx, func() bool {
		for _, c := range s.Received() {
			if match(c) {
				found = c
				return true
			}
		}
		return false
	})
	return found, err
}

// updateInfo changes a session's snapshot.
func (s *Server) updateInfo(id uint64, f func(*SessionInfo)) {
	s.mu.Lock()
	if in, ok := s.infos[id]; ok {
		f(in)
	}
	s.mu.Unlock()
	s.notify()
}

func (s *Server) removeSession(id uint64) {
	s.mu.Lock()
	delete(s.sessions, id)
	delete(s.infos, id)
	s.mu.Unlock()
	s.notify()
}
