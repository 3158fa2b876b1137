package sim

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// flushThreshold bounds one socket write while a large PnL batch is being built.
const flushThreshold = 256 << 10

var (
	errDropped = errors.New("connection dropped")
	errClosed  = errors.New("close frame sent")
)

// garbageFrames rotate under Config.GarbageEvery (read-only).
var garbageFrames = [...]struct {
	op      byte
	payload string
}{
	{opText, "this is not json"},
	{opText, `{"type":"pnl_update","position_id":`},
	{opText, `[1,2,3]`},
	{opText, `{"no_type":true,"server_time_ms":0}`},
	{opBinary, "\x00\x01\xfe\xffsim-binary"},
}

var regimes = [...]string{"risk_on", "risk_off", "high_volatility", "low_liquidity"}

// outItem is one queued server frame, or a burst of PnL frames.
type outItem struct {
	op      byte
	payload []byte
	stamp   bool // exit signal: add sim_sent_ns at write time
	exit    bool
	pnl     *pnlPos
	pnlN    int
}

// pnlPos is a connection's view of an open position for PnL, liquidity and ticks.
type pnlPos struct {
	id, tokens, entry uint64
	price, base       uint64 // current and entry price, quote units per whole token
}

// conn is one WebSocket session. The handler goroutine reads; writeLoop is the only
// writer of the socket and frames everything itself (gorilla is used for the handshake
// and for reading), so a whole batch of frames goes out in one write.
type conn struct {
	s          *Server
	ws         *websocket.Conn
	nc         net.Conn // what the writer writes to (TLS for wss://)
	tcp        net.Conn // the TCP connection under nc: closing it is an abrupt drop
	key        string
	num        int
	sessionID  uint64
	helloFirst bool
	mute       bool // WithholdHello: never hello_ok, frames recorded but not handled
	log        zerolog.Logger

	mu          sync.Mutex // guards the fields below; taken after Server.mu
	queue       []outItem
	spare       []outItem
	helloQueued bool
	closeQueued bool
	configured  bool
	wallets     []string
	walletSet   map[string]struct{}
	deadlineSec uint64

	notify     chan struct{} // capacity 1: wakes the writer
	quit       chan struct{} // closed to end the session gracefully
	quitOnce   sync.Once
	writerDone chan struct{}
	readerDone chan struct{}
	peerClosed atomic.Bool // the client sent a close frame
	hasQueued  atomic.Bool
	helloSent  atomic.Bool
	active     atomic.Bool // configured
	dropped    atomic.Bool
	viewGen    atomic.Uint64
	stallUntil atomic.Int64

	// Writer goroutine only.
	rng          *rand.Rand
	buf          []byte
	tmp          []byte
	budget       int // data frames left before a DropAfterFrames drop; -1 unlimited
	closeWritten bool
	nFrames      uint64
	nPnL         uint64
	nExits       uint64
	pnlLast      time.Time
	pnlCarry     float64
	pnlRR        int
	liqRR        int
	tradeRR      int
	extraN       int
	visible      []*pnlPos
	pnlState     map[uint64]*pnlPos
	seenPosGen   uint64
	seenViewGen  uint64
	wantPing     bool
	wantGarbage  bool
	wantLiq      bool
	wantTrade    bool
	wantUnknown  bool
}

func newConn(s *Server, ws *websocket.Conn, key string, num int, session uint64) *conn {
	c := &conn{
		s: s, ws: ws, nc: ws.NetConn(), tcp: rawConn(ws.NetConn()), key: key, num: num, sessionID: session,
		helloFirst: s.cfg.HelloOrder.serverFirst(num),
		mute:       s.withholdHello.Load(),
		notify:     make(chan struct{}, 1),
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
		readerDone: make(chan struct{}),
		rng:        rand.New(rand.NewPCG(s.cfg.Seed, uint64(num))),
		buf:        make([]byte, 0, 64<<10),
		budget:     -1,
		pnlState:   make(map[uint64]*pnlPos),
		seenPosGen: math.MaxUint64,
	}
	if s.cfg.DropAfterFrames > 0 {
		c.budget = s.cfg.DropAfterFrames
	}
	c.log = s.log.With().Int("conn", num).Uint64("session_id", session).Logger()
	return c
}

// run serves the session on the (tracked) HTTP handler goroutine.
func (c *conn) run() {
	c.log.Info().Str("remote", c.nc.RemoteAddr().String()).Bool("hello_first", c.helloFirst).Msg("session opened")
	if c.helloFirst && !c.mute {
		c.mu.Lock()
		c.queueHelloLocked()
		c.mu.Unlock()
	}
	c.s.wg.Add(1) // the handler holds a count, so this cannot race with Wait
	go c.writeLoop()
	c.readLoop()
	close(c.readerDone)
	c.requestClose(websocket.CloseNormalClosure, "")
	<-c.writerDone
	c.log.Info().Bool("dropped", c.dropped.Load()).Msg("session closed")
}

// --- queueing ----------------------------------------------------------------------------

func (c *conn) enqueueLocked(it outItem) {
	c.queue = append(c.queue, it)
	c.hasQueued.Store(true)
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *conn) enqueue(it outItem) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.enqueueLocked(it)
}

func (c *conn) takeQueue() []outItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	items := c.queue
	c.queue = c.spare[:0]
	c.spare = items
	c.hasQueued.Store(false)
	return items
}

func (c *conn) queueHelloLocked() {
	c.helloQueued = true
	c.enqueueLocked(outItem{op: opText, payload: mustJSON(msgHello{Type: "hello_ok", SessionID: c.sessionID,
		ServerTimeMs: time.Now().UnixMilli(), Limits: c.s.limits})})
	c.helloSent.Store(true)
}

func (c *conn) sendError(code, msg string) {
	c.log.Debug().Str("code", code).Str("message", msg).Msg("error sent")
	c.enqueue(outItem{op: opText, payload: encodeError(code, msg)})
}

func (c *conn) seesLocked(wallet string) bool {
	_, ok := c.walletSet[wallet]
	return c.configured && ok
}

func (c *conn) sees(wallet string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seesLocked(wallet)
}

// requestClose ends the session gracefully: queued frames, then a close frame.
func (c *conn) requestClose(code int, reason string) {
	c.mu.Lock()
	if !c.closeQueued {
		c.closeQueued = true
		c.enqueueLocked(outItem{op: opClose, payload: closePayload(code, reason)})
	}
	c.mu.Unlock()
	c.quitOnce.Do(func() { close(c.quit) })
}

// drop closes the TCP connection with no close frame.
func (c *conn) drop(reason string) {
	if !c.dropped.CompareAndSwap(false, true) {
		return
	}
	c.s.drops.Add(1)
	c.log.Info().Str("reason", reason).Msg("dropping connection abruptly")
	c.tcp.Close()
	c.quitOnce.Do(func() { close(c.quit) })
}

// stall stops sending, command processing and ping answers for d.
func (c *conn) stall(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := c.stallUntil.Load()
		if cur >= until || c.stallUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	c.s.stalls.Add(1)
	c.log.Info().Dur("for_ms", d).Msg("stalling")
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *conn) stalled() bool { return time.Now().UnixNano() < c.stallUntil.Load() }

// waitStall blocks while the connection is stalled; ok is false if it ended meanwhile.
func (c *conn) waitStall() (ok, waited bool) {
	for {
		d := time.Duration(c.stallUntil.Load() - time.Now().UnixNano())
		if d <= 0 {
			return true, waited
		}
		waited = true
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.quit:
			t.Stop()
			return false, waited
		}
	}
}

// --- reading -----------------------------------------------------------------------------

func (c *conn) record(op int, data []byte, typ string) {
	c.s.record(ClientFrame{Conn: c.num, SessionID: c.sessionID, Opcode: op, Type: typ, Raw: data, At: time.Now()})
}

func (c *conn) readLoop() {
	ws := c.ws
	ws.SetReadLimit(1 << 20)
	ws.SetPingHandler(func(data string) error {
		c.record(websocket.PingMessage, []byte(data), "")
		if !c.stalled() {
			c.enqueue(outItem{op: opPong, payload: []byte(data)})
		}
		return nil
	})
	ws.SetPongHandler(func(data string) error {
		c.record(websocket.PongMessage, []byte(data), "")
		return nil
	})
	ws.SetCloseHandler(func(code int, text string) error {
		c.record(websocket.CloseMessage, closePayload(code, text), "")
		c.peerClosed.Store(true)
		c.requestClose(code, "")
		return nil
	})
	for {
		mt, data, err := ws.ReadMessage()
		if err != nil {
			if !c.dropped.Load() {
				c.log.Debug().Err(err).Msg("read ended")
			}
			return
		}
		var f fields
		typ := ""
		if mt == websocket.TextMessage {
			if json.Unmarshal(data, &f) == nil && f != nil {
				typ, _, _ = f.optString("type")
			} else {
				f = nil
			}
		}
		c.record(mt, data, typ)
		if c.mute {
			continue
		}
		if ok, _ := c.waitStall(); !ok {
			return
		}
		c.handle(mt, f, typ, data)
	}
}

func (c *conn) handle(mt int, f fields, typ string, raw []byte) {
	switch {
	case mt != websocket.TextMessage:
		c.sendError(CodeInvalidMessage, "binary frames are not supported; send JSON text frames")
		return
	case f == nil:
		c.sendError(CodeInvalidMessage, "frame is not a JSON object")
		return
	case typ == "":
		c.sendError(CodeMissingType, `message has no string "type" field`)
		return
	}
	canonical := typ
	switch typ {
	case "sell_now":
		canonical = "request_exit_signal"
	case "UpdatePositionStrategy": // the Go SDK's spelling
		canonical = "update_position_strategy"
	}
	c.log.Debug().Str("type", typ).Msg("command")
	switch canonical {
	case "ping":
		c.enqueue(outItem{op: opText, payload: mustJSON(msgPong{Type: "pong", ServerTimeMs: time.Now().UnixMilli()})})
		return
	case "configure":
		c.invalid(canonical, c.onConfigure(f, raw))
		return
	case "update_strategy", "update_wallets", "update_watch_wallets", "update_position_strategy",
		"close_position", "request_exit_signal":
	default:
		c.sendError(CodeUnknownType, "unsupported client message type: "+typ)
		return
	}
	c.mu.Lock()
	configured := c.configured
	c.mu.Unlock()
	if !configured {
		c.sendError(CodeNotConfigured, typ+" received before a valid configure")
		return
	}
	var err error
	switch canonical {
	case "update_strategy":
		err = c.onUpdateStrategy(f)
	case "update_wallets":
		err = c.onUpdateWallets(f)
	case "update_watch_wallets":
		_, err = validateWatchWallets(f["watch_wallets"], true, c.s.cfg.Limits.MaxWatchWalletsPerSession)
	case "update_position_strategy":
		err = c.onUpdatePositionStrategy(f)
	case "close_position":
		err = c.onClosePosition(f)
	case "request_exit_signal":
		err = c.onRequestExit(f)
	}
	c.invalid(canonical, err)
}

// notFound is an error answered with CodePositionNotFound.
type notFound struct{ msg string }

func (e notFound) Error() string { return e.msg }

func (c *conn) invalid(canonical string, err error) {
	if err == nil {
		return
	}
	var nf notFound
	if errors.As(err, &nf) {
		c.sendError(CodePositionNotFound, nf.msg)
		return
	}
	c.sendError("invalid_"+canonical, err.Error())
}

func (c *conn) onConfigure(f fields, raw []byte) error {
	lim := &c.s.cfg.Limits
	wallets, err := parseWallets(f, lim.MaxWalletsPerSession)
	if err != nil {
		return err
	}
	deadline, _, err := f.optUint("deadline_timeout_sec", math.MaxUint64)
	if err != nil {
		return err
	}
	if err := validateStrategy(f["strategy"], deadline); err != nil {
		return err
	}
	if _, _, err := f.optString("send_mode"); err != nil {
		return err
	}
	if _, _, err := f.optUint("tip_lamports", math.MaxUint64); err != nil {
		return err
	}
	if _, err := validateWatchWallets(f["watch_wallets"], false, lim.MaxWatchWalletsPerSession); err != nil {
		return err
	}
	if _, err := f.optObject("mirror_config"); err != nil {
		return err
	}

	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range wallets {
		s.autoFillLocked(w)
	}
	snap := s.snapshotLocked(wallets)
	s.lastConfig = raw
	c.mu.Lock()
	c.setWalletsLocked(wallets)
	c.deadlineSec = deadline
	c.configured = true
	if !c.helloQueued {
		c.queueHelloLocked()
	}
	for _, b := range snap {
		c.enqueueLocked(outItem{op: opText, payload: b})
	}
	c.mu.Unlock()
	c.active.Store(true)
	c.viewGen.Add(1)
	c.log.Info().Int("wallets", len(wallets)).Int("snapshot", len(snap)).Msg("configured")
	return nil
}

func (c *conn) setWalletsLocked(wallets []string) {
	c.wallets = wallets
	c.walletSet = make(map[string]struct{}, len(wallets))
	for _, w := range wallets {
		c.walletSet[w] = struct{}{}
	}
}

func (c *conn) onUpdateStrategy(f fields) error {
	deadline, has, err := f.optUint("deadline_timeout_sec", math.MaxUint64)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if !has {
		deadline = c.deadlineSec
	}
	c.mu.Unlock()
	if err := validateStrategy(f["strategy"], deadline); err != nil {
		return err
	}
	if has {
		c.mu.Lock()
		c.deadlineSec = deadline
		c.mu.Unlock()
	}
	return nil
}

func (c *conn) onUpdateWallets(f fields) error {
	wallets, err := parseWallets(f, c.s.cfg.Limits.MaxWalletsPerSession)
	if err != nil {
		return err
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range wallets {
		s.autoFillLocked(w)
	}
	c.mu.Lock()
	var added []string
	for _, w := range wallets {
		if _, ok := c.walletSet[w]; !ok {
			added = append(added, w)
		}
	}
	c.setWalletsLocked(wallets)
	for _, b := range s.snapshotLocked(added) {
		c.enqueueLocked(outItem{op: opText, payload: b})
	}
	c.mu.Unlock()
	c.viewGen.Add(1)
	return nil
}

func (c *conn) onUpdatePositionStrategy(f fields) error {
	if !f.present("position_id") {
		return errors.New("position_id is required")
	}
	id, _, err := f.optUint("position_id", math.MaxUint64)
	if err != nil {
		return err
	}
	c.mu.Lock()
	deadline := c.deadlineSec
	c.mu.Unlock()
	if err := validateStrategy(f["strategy"], deadline); err != nil {
		return err
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.s.findLocked(c, selector{id: id, byID: true}) == nil {
		return notFound{"no open position with position_id " + strconv.FormatUint(id, 10)}
	}
	return nil
}

func (c *conn) onClosePosition(f fields) error {
	sel, err := parseSelector(f)
	if err != nil {
		return err
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.findLocked(c, sel)
	if p == nil {
		return notFound{"no open position with " + sel.String()}
	}
	s.closePositionLocked(p, s.cfg.CloseReason)
	return nil
}

func (c *conn) onRequestExit(f fields) error {
	sel, err := parseSelector(f)
	if err != nil {
		return err
	}
	slippage, _, err := f.optUint("slippage_bps", math.MaxUint16)
	if err != nil {
		return err
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.findLocked(c, sel)
	if p == nil {
		return notFound{"no open position with " + sel.String()}
	}
	s.exitLocked(p, "sell_now", c, nil, nil, slippage)
	return nil
}

// --- writing -----------------------------------------------------------------------------

func pnlTickFor(rate float64) time.Duration {
	if rate <= 0 {
		return 0
	}
	d := time.Duration(float64(time.Second) / rate)
	return min(max(d, time.Millisecond), 100*time.Millisecond)
}

func ticker(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(d)
	return t.C, t.Stop
}

func (c *conn) writeLoop() {
	s := c.s
	cfg := &s.cfg
	defer s.wg.Done()
	defer close(c.writerDone)
	defer s.unregister(c)
	defer c.nc.Close()

	pingC, stop1 := ticker(cfg.PingEvery)
	defer stop1()
	garbageC, stop2 := ticker(cfg.GarbageEvery)
	defer stop2()
	liqC, stop3 := ticker(cfg.LiquidityEvery)
	defer stop3()
	tradeC, stop4 := ticker(cfg.TradeTickEvery)
	defer stop4()
	unknownC, stop5 := ticker(cfg.UnknownTypeEvery)
	defer stop5()
	stallC, stop6 := ticker(cfg.StallEvery)
	defer stop6()
	var dropC <-chan time.Time
	if cfg.DropEvery > 0 {
		t := time.NewTimer(cfg.DropEvery)
		defer t.Stop()
		dropC = t.C
	}
	pnlT := time.NewTicker(time.Hour)
	pnlT.Stop()
	defer pnlT.Stop()
	var pnlC <-chan time.Time
	var pnlEvery time.Duration
	c.pnlLast = time.Now()

	for {
		if want := pnlTickFor(s.pnlRate()); want != pnlEvery {
			pnlEvery = want
			if want == 0 {
				pnlT.Stop()
				pnlC = nil
			} else {
				pnlT.Reset(want)
				pnlC = pnlT.C
			}
		}
		select {
		case <-c.quit:
			c.writeFinal()
			return
		case <-c.notify:
		case <-pnlC:
		case <-pingC:
			c.wantPing = true
		case <-garbageC:
			c.wantGarbage = true
		case <-liqC:
			c.wantLiq = true
		case <-tradeC:
			c.wantTrade = true
		case <-unknownC:
			c.wantUnknown = true
		case <-stallC:
			c.stall(cfg.StallFor)
		case <-dropC:
			c.drop("drop-every")
			return
		}
		ok, waited := c.waitStall()
		if !ok {
			c.writeFinal()
			return
		}
		if waited {
			c.pnlLast, c.pnlCarry = time.Now(), 0
		}
		if err := c.round(); err != nil {
			if !errors.Is(err, errDropped) && !errors.Is(err, errClosed) && !c.dropped.Load() {
				c.log.Info().Err(err).Msg("write failed")
			}
			return
		}
	}
}

// writeFinal flushes the queue (normally ending with a close frame) and returns.
func (c *conn) writeFinal() {
	if c.dropped.Load() {
		return
	}
	c.mu.Lock()
	if !c.closeQueued {
		c.closeQueued = true
		c.enqueueLocked(outItem{op: opClose, payload: closePayload(websocket.CloseNormalClosure, "")})
	}
	c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	if err := c.drainQueue(); err == nil && c.flush() == nil {
		c.closeHandshake()
	}
}

// closeHandshake waits (briefly) for the client's answering close frame after a
// server-initiated close, so the client is not reset while it echoes (RFC 6455 7.1.1).
func (c *conn) closeHandshake() {
	if !c.closeWritten || c.peerClosed.Load() {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
	}
}

// round builds and writes one batch: control frames, the queue (FIFO), scheduled
// extras, then PnL.
func (c *conn) round() error {
	now := time.Now()
	if c.wantPing {
		c.wantPing = false
		c.buf = appendFrame(c.buf, opPing, strconv.AppendInt(c.tmp[:0], now.UnixMilli(), 10))
	}
	if err := c.drainQueue(); err != nil {
		return err
	}
	if c.closeWritten {
		if c.flush() == nil {
			c.closeHandshake()
		}
		return errClosed
	}
	if c.helloSent.Load() {
		c.appendExtras(now)
	}
	c.wantGarbage, c.wantUnknown, c.wantLiq, c.wantTrade = false, false, false, false
	if err := c.genPnL(now); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return err
	}
	if c.closeWritten {
		c.closeHandshake()
		return errClosed
	}
	if c.budget == 0 {
		c.drop("drop-after-frames")
		return errDropped
	}
	return nil
}

func (c *conn) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if !c.closeWritten {
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	}
	_, err := c.nc.Write(c.buf)
	c.buf = c.buf[:0]
	if c.nFrames > 0 && err == nil {
		// Counted once written: frames of a failed write (the peer gone)
		// may or may not have left, and are not counted as sent.
		c.s.framesSent.Add(c.nFrames)
		c.s.pnlSent.Add(c.nPnL)
		c.s.exitsSent.Add(c.nExits)
	}
	c.nFrames, c.nPnL, c.nExits = 0, 0, 0
	return err
}

// countData accounts for one data frame; false when the drop budget is used up.
func (c *conn) countData() bool {
	c.nFrames++
	if c.budget > 0 {
		c.budget--
	}
	return c.budget != 0
}

func (c *conn) drainQueue() error {
	items := c.takeQueue()
	defer clear(items)
	for i := range items {
		it := &items[i]
		switch {
		case it.op == opClose:
			c.buf = appendFrame(c.buf, opClose, it.payload)
			c.closeWritten = true
			return nil
		case it.op == opPing || it.op == opPong:
			c.buf = appendFrame(c.buf, it.op, it.payload)
			continue
		case c.budget == 0:
			return nil
		case it.pnlN > 0:
			p := c.pnlState[it.pnl.id]
			if p == nil {
				p = it.pnl
				c.pnlState[p.id] = p
			}
			nowMs := time.Now().UnixMilli()
			for n := 0; n < it.pnlN && c.budget != 0; n++ {
				c.appendPnLFrame(p, nowMs)
				if len(c.buf) >= flushThreshold {
					if err := c.flush(); err != nil {
						return err
					}
				}
			}
			continue
		case it.stamp:
			c.tmp = append(c.tmp[:0], it.payload[:len(it.payload)-1]...)
			c.tmp = append(c.tmp, `,"sim_sent_ns":`...)
			c.tmp = strconv.AppendInt(c.tmp, time.Now().UnixNano(), 10)
			c.tmp = append(c.tmp, '}')
			c.buf = appendFrame(c.buf, it.op, c.tmp)
		default:
			c.buf = appendFrame(c.buf, it.op, it.payload)
		}
		if it.exit {
			c.nExits++
		}
		c.countData()
		if len(c.buf) >= flushThreshold {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *conn) appendExtras(now time.Time) {
	cfg := &c.s.cfg
	nowMs := now.UnixMilli()
	if c.wantGarbage && c.budget != 0 {
		g := garbageFrames[c.extraN%len(garbageFrames)]
		c.extraN++
		c.buf = appendFrame(c.buf, g.op, []byte(g.payload))
		c.countData()
	}
	if c.wantUnknown && c.budget != 0 {
		c.buf = appendFrame(c.buf, opText, mustJSON(msgUnknown{Type: cfg.UnknownType,
			Regime: regimes[c.rng.IntN(len(regimes))], VolatilityBps: 200 + c.rng.Uint64N(3000),
			ConfidencePct: float64(500+c.rng.IntN(500)) / 10, ServerTimeMs: nowMs}))
		c.countData()
	}
	if !(c.wantLiq || c.wantTrade) || !c.active.Load() {
		return
	}
	c.refreshVisible()
	if len(c.visible) == 0 {
		return
	}
	if c.wantLiq && c.budget != 0 {
		p := c.visible[c.liqRR%len(c.visible)]
		c.liqRR++
		bands := make([]slippageBand, 0, 4)
		cov := 10 + c.rng.IntN(20)
		for _, bps := range []uint16{100, 300, 500, 1000} {
			cov = min(cov+5+c.rng.IntN(25), 100)
			bands = append(bands, slippageBand{SlippageBps: bps, MaxTokens: p.tokens / 100 * uint64(cov), CoveragePct: float64(cov)})
		}
		trend := [...]string{"stable", "improving", "deteriorating"}[c.rng.IntN(3)]
		c.buf = appendFrame(c.buf, opText, mustJSON(msgLiquidity{Type: "liquidity_snapshot", PositionID: p.id,
			Bands: bands, LiquidityTrend: trend, ServerTimeMs: nowMs}))
		c.countData()
	}
	if c.wantTrade && c.budget != 0 {
		p := c.visible[c.tradeRR%len(c.visible)]
		c.tradeRR++
		amount := (1 + c.rng.Uint64N(5000)) * 1000 * tokenUnit
		side := "buy"
		if c.rng.IntN(2) == 0 {
			side = "sell"
		}
		n := strconv.Itoa(c.num) + "/" + strconv.Itoa(c.tradeRR)
		c.buf = appendFrame(c.buf, opText, mustJSON(msgTradeTick{Type: "trade_tick", PositionID: p.id, TimeMs: nowMs,
			Side: side, TokenAmount: amount, QuoteAmount: mulDiv(amount, p.price, tokenUnit), PriceQuote: p.price,
			Maker: fakeKey("maker", n), TxSignature: fakeSignature("tick", n)}))
		c.countData()
	}
}

// refreshVisible rebuilds the positions this session sees when positions or wallets changed.
func (c *conn) refreshVisible() {
	pg, vg := c.s.posGen.Load(), c.viewGen.Load()
	if pg == c.seenPosGen && vg == c.seenViewGen {
		return
	}
	c.seenPosGen, c.seenViewGen = pg, vg
	c.visible = c.visible[:0]
	s := c.s
	s.mu.Lock()
	c.mu.Lock()
	for _, id := range s.sortedIDsLocked(nil) {
		p := s.positions[id]
		if !c.seesLocked(p.wallet) {
			continue
		}
		st := c.pnlState[id]
		if st == nil {
			st = &pnlPos{id: id, tokens: p.tokens, entry: p.entry, price: p.price, base: p.price}
			c.pnlState[id] = st
		}
		c.visible = append(c.visible, st)
	}
	c.mu.Unlock()
	s.mu.Unlock()
	if len(c.pnlState) > 2*len(c.visible)+16 {
		keep := make(map[uint64]*pnlPos, len(c.visible))
		for _, p := range c.visible {
			keep[p.id] = p
		}
		c.pnlState = keep
	}
}

func (c *conn) genPnL(now time.Time) error {
	rate := c.s.pnlRate()
	if rate <= 0 || !c.active.Load() || c.budget == 0 {
		c.pnlLast, c.pnlCarry = now, 0
		return nil
	}
	c.refreshVisible()
	if len(c.visible) == 0 {
		c.pnlLast, c.pnlCarry = now, 0
		return nil
	}
	due := rate*now.Sub(c.pnlLast).Seconds() + c.pnlCarry
	c.pnlLast = now
	// Never burst more than 20 ms worth (after a slow write or a stall).
	if lim := max(1, rate/50); due > lim {
		due = lim
	}
	n := int(due)
	c.pnlCarry = due - float64(n)
	nowMs := now.UnixMilli()
	for i := 0; i < n && c.budget != 0; i++ {
		c.appendPnLFrame(c.visible[c.pnlRR%len(c.visible)], nowMs)
		c.pnlRR++
		if len(c.buf) >= flushThreshold {
			if err := c.flush(); err != nil {
				return err
			}
			// High-priority frames queued meanwhile go out before more PnL.
			if c.hasQueued.Load() {
				if err := c.drainQueue(); err != nil || c.closeWritten {
					return err
				}
			}
		}
	}
	return nil
}

// appendPnLFrame moves p's price one random-walk step and appends its pnl_update.
func (c *conn) appendPnLFrame(p *pnlPos, nowMs int64) {
	step := int64(c.rng.Uint64N(41)) - 20 // per mille
	switch {
	case p.price > 4*p.base:
		step -= 8
	case p.price < p.base/4:
		step += 8
	}
	price := int64(p.price) + int64(p.price)*step/1000
	p.price = uint64(max(price, 1))
	proceeds := mulDiv(p.tokens, p.price, tokenUnit)
	var start int
	c.buf, start = beginTextFrame(c.buf)
	c.buf = appendPnL(c.buf, p.id, int64(proceeds)-int64(p.entry), proceeds, nowMs, p.price, p.price*tokenSupply)
	c.buf = endTextFrame(c.buf, start)
	c.nPnL++
	c.countData()
}
