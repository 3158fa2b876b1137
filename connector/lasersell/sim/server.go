// Package sim is a simulator of the LaserSell Exit Intelligence Stream server
// (PROTOCOLS.md section 1): a WebSocket endpoint speaking the stream's JSON protocol,
// with wallet holdings and open positions that outlive connections (so every reconnect
// re-emits the same facts), scheduled traffic (PnL, exits, liquidity, trade ticks,
// unknown future types) and fault injection (abrupt drops, garbage frames, stalls,
// server pings). Tests drive it through the methods of Server; the CLI binds Config to
// flags with Config.RegisterFlags.
//
// Every goroutine the simulator starts belongs to a Server and ends in Close.
package sim

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// Errors returned by Server methods.
var (
	ErrUnknownPosition = errors.New("sim: unknown or closed position")
	ErrNoSession       = errors.New("sim: no configured session sees this position")
	ErrClosed          = errors.New("sim: server closed")
	ErrAlreadyServing  = errors.New("sim: server already serving")
)

// ClientFrame is one frame received from a client.
type ClientFrame struct {
	Conn      int       // connection number, 1-based, in accept order
	SessionID uint64    // session_id given to that connection
	Opcode    int       // websocket.TextMessage, BinaryMessage, CloseMessage, PingMessage or PongMessage
	Type      string    // the "type" of a JSON object text frame, else ""
	Raw       []byte    // payload as received
	At        time.Time // when it was read
}

// Position is an open position as the simulator holds it.
type Position struct {
	ID              uint64
	Wallet          string
	Mint            string
	TokenAccount    string
	Tokens          uint64
	EntryQuoteUnits uint64
	Slot            uint64
	OpenedAtMs      int64
}

// Stats are cumulative counters.
type Stats struct {
	Connections     int    // WebSocket sessions accepted
	Active          int    // sessions open now
	Refused         int    // upgrades refused (401, SetRefuseStatus, session limit)
	FramesSent      uint64 // data frames written (text and binary)
	PnLSent         uint64 // pnl_update frames written
	ExitSignalsSent uint64 // exit_signal_with_tx frames written
	Drops           uint64 // abrupt drops
	Stalls          uint64 // stalls started
	TLSHellos       uint64 // TLS ClientHellos received (wss://), refused handshakes included
	ClientFrames    uint64 // frames received from clients
}

type holding struct {
	mint    string
	account string
	tokens  uint64
	slot    uint64
	enc     []byte // balance_update, re-encoded only when the holding changes
}

type walletState struct {
	mints    []string // insertion order, for a stable snapshot order
	holdings map[string]*holding
}

type position struct {
	id         uint64
	wallet     string
	mint       string
	account    string
	tokens     uint64
	entry      uint64
	price      uint64 // entry price: quote units per whole token
	mark       uint64 // current price, moved by exits
	slot       uint64
	openedAtMs int64
	market     *marketContext
	opened     []byte // position_opened, encoded once: re-emitted byte for byte
	lastTrigMs int64
	levels     uint32
}

func (p *position) public() Position {
	return Position{ID: p.id, Wallet: p.wallet, Mint: p.mint, TokenAccount: p.account,
		Tokens: p.tokens, EntryQuoteUnits: p.entry, Slot: p.slot, OpenedAtMs: p.openedAtMs}
}

// Server is the simulator. All methods are safe for concurrent use.
type Server struct {
	cfg      Config // immutable after New
	log      zerolog.Logger
	upgrader websocket.Upgrader
	limits   []byte

	apiKey        atomic.Pointer[string]
	refuseStatus  atomic.Int64
	withholdHello atomic.Bool
	exitsPaused   atomic.Bool // SetScheduledExits(false)
	pnlRateBits   atomic.Uint64
	posGen        atomic.Uint64 // bumped whenever the set of open positions changes

	mu          sync.Mutex // guards everything below and lock-orders before conn.mu
	closed      bool
	ln          net.Listener
	httpSrv     *http.Server
	conns       map[*conn]struct{}
	perKey      map[string]int
	nConns      int
	refused     int
	nextSession uint64
	wallets     map[string]*walletState
	positions   map[uint64]*position
	nextPosID   uint64
	slot        uint64
	rng         *rand.Rand
	lastConfig  []byte
	exitRR      int
	openRR      int
	exitN       int

	recMu      sync.Mutex
	received   []ClientFrame
	recBase    int // frames dropped from the front of received
	recNotify  chan struct{}
	recCounter uint64

	framesSent atomic.Uint64
	pnlSent    atomic.Uint64
	exitsSent  atomic.Uint64
	drops      atomic.Uint64
	stalls     atomic.Uint64
	tlsHellos  atomic.Uint64

	done      chan struct{}
	closeOnce sync.Once
	bgOnce    sync.Once
	wg        sync.WaitGroup
}

// New returns a Server; zero Config fields take their defaults. Nothing runs until
// Start, Serve or Handler is used; Close releases everything.
func New(cfg Config, logger zerolog.Logger) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:         cfg,
		log:         logger.With().Str("component", "lasersell-sim").Logger(),
		conns:       make(map[*conn]struct{}),
		perKey:      make(map[string]int),
		nextSession: cfg.FirstSessionID,
		wallets:     make(map[string]*walletState),
		positions:   make(map[uint64]*position),
		nextPosID:   1,
		slot:        312_000_000 + cfg.Seed%1000*1000,
		rng:         rand.New(rand.NewPCG(cfg.Seed, 0x1a5e55e11)),
		recNotify:   make(chan struct{}),
		done:        make(chan struct{}),
	}
	s.limits = encodeLimits(&s.cfg)
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:   4096,
		WriteBufferSize:  256, // gorilla only writes the handshake and rare protocol-error closes
		HandshakeTimeout: 5 * time.Second,
		CheckOrigin:      func(*http.Request) bool { return true },
	}
	key := cfg.APIKey
	s.apiKey.Store(&key)
	s.withholdHello.Store(cfg.WithholdHello)
	s.SetPnLRate(cfg.PnLRate)
	return s
}

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// Start listens on addr (Config.Addr when empty) and serves in the background.
// It returns the WebSocket URL, for example "ws://127.0.0.1:8082/v1/ws"
// (wss:// with Config.TLSCert).
func (s *Server) Start(addr string) (string, error) {
	if err := s.cfg.Validate(); err != nil {
		return "", err
	}
	if addr == "" {
		addr = s.cfg.Addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("sim: listen %s: %w", addr, err)
	}
	srv, served, err := s.prepare(ln)
	if err != nil {
		ln.Close()
		return "", err
	}
	s.wg.Add(1) // prepare succeeded, so the server is not closed: Add is safe
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(served); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("serve")
		}
	}()
	return s.URL(), nil
}

// Serve serves on ln until ctx ends or Close is called, then closes the server and
// returns nil (or the listener's error).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.cfg.Validate(); err != nil {
		return err
	}
	srv, served, err := s.prepare(ln)
	if err != nil {
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
			s.shutdown()
		case <-s.done:
		}
	}()
	err = srv.Serve(served)
	s.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// prepare registers ln and returns the HTTP server and the listener it
// serves: ln itself, or ln wrapped in TLS (Config.TLSCert).
func (s *Server) prepare(ln net.Listener) (*http.Server, net.Listener, error) {
	served, err := s.cfg.tlsListener(ln, &s.tlsHellos)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, ErrClosed
	}
	if s.ln != nil {
		return nil, nil, ErrAlreadyServing
	}
	s.ln = ln
	s.httpSrv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(s.log.With().Str("source", "net/http").Logger(), "", 0),
	}
	s.log.Info().Str("url", s.urlLocked()).Str("hello_order", string(s.cfg.HelloOrder)).Msg("listening")
	return s.httpSrv, served, nil
}

// URL returns the WebSocket URL once listening (unspecified hosts become
// 127.0.0.1; wss:// when serving TLS), else "".
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urlLocked()
}

func (s *Server) urlLocked() string {
	if s.ln == nil {
		return ""
	}
	host, port, err := net.SplitHostPort(s.ln.Addr().String())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "ws://"
	if s.cfg.TLSCert != "" {
		scheme = "wss://"
	}
	return scheme + net.JoinHostPort(host, port) + s.cfg.Path
}

// Handler returns the HTTP handler: the WebSocket endpoint at Config.Path and a
// "/healthz" probe. Use it to mount the simulator in another server (httptest).
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case s.cfg.Path:
			s.handleWS(w, r)
		case "/healthz":
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.NotFound(w, r)
		}
	})
}

// Close stops the listener, closes every session (close frame 1001, then the socket)
// and waits for every goroutine of the server. It is idempotent.
func (s *Server) Close() {
	s.shutdown()
	// A writer blocked on a client that does not read cannot send its close frame:
	// force the sockets shut if the graceful close takes too long.
	force := time.AfterFunc(500*time.Millisecond, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			c.tcp.Close()
		}
	})
	s.wg.Wait()
	force.Stop()
}

func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		srv := s.httpSrv
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		close(s.done)
		if srv != nil {
			_ = srv.Close()
		}
		for _, c := range conns {
			c.requestClose(websocket.CloseGoingAway, "server shutting down")
		}
		s.log.Info().Msg("closed")
	})
}

// track registers a goroutine about to run for the server; false once closed.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// startBackground starts the server-wide scheduler (exits, openings) once.
func (s *Server) startBackground() {
	if s.cfg.ExitEvery <= 0 && s.cfg.OpenEvery <= 0 {
		return
	}
	s.bgOnce.Do(func() {
		if !s.track() {
			return
		}
		go s.background()
	})
}

func (s *Server) background() {
	defer s.wg.Done()
	var exitC, openC <-chan time.Time
	if s.cfg.ExitEvery > 0 {
		t := time.NewTicker(s.cfg.ExitEvery)
		defer t.Stop()
		exitC = t.C
	}
	if s.cfg.OpenEvery > 0 {
		t := time.NewTicker(s.cfg.OpenEvery)
		defer t.Stop()
		openC = t.C
	}
	for {
		select {
		case <-s.done:
			return
		case <-exitC:
			if !s.exitsPaused.Load() {
				s.scheduledExit()
			}
		case <-openC:
			s.scheduledOpen()
		}
	}
}

var exitReasons = [...]string{"target_profit", "stop_loss", "trailing_stop", "graduation", "timeout"}

func (s *Server) scheduledExit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := s.sortedIDsLocked(func(p *position) bool { return s.seenLocked(p.wallet) })
	if len(ids) == 0 {
		return
	}
	p := s.positions[ids[s.exitRR%len(ids)]]
	s.exitRR++
	s.exitN++
	reason := exitReasons[s.exitN%len(exitReasons)]
	if s.exitN%4 == 0 {
		// A partial take-profit ladder exit.
		level := p.levels
		p.levels++
		sell := p.tokens / 4
		s.exitLocked(p, "target_profit", nil, &level, &sell, 0)
		return
	}
	s.exitLocked(p, reason, nil, nil, nil, 0)
}

func (s *Server) scheduledOpen() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wallets []string
	seen := map[string]bool{}
	for c := range s.conns {
		c.mu.Lock()
		for _, w := range c.wallets {
			if !seen[w] {
				seen[w] = true
				wallets = append(wallets, w)
			}
		}
		c.mu.Unlock()
	}
	if len(wallets) == 0 {
		return
	}
	slices.Sort(wallets)
	w := wallets[s.openRR%len(wallets)]
	s.openRR++
	open := s.sortedIDsLocked(func(p *position) bool { return p.wallet == w })
	if uint64(len(open)) >= s.cfg.Limits.MaxPositionsPerWallet {
		s.closePositionLocked(s.positions[open[0]], "timeout")
	}
	mint := pumpMint("open", w, strconv.FormatUint(s.nextPosID, 10))
	tokens := (s.rng.Uint64N(900) + 100) * 1_000 * tokenUnit
	s.openPositionLocked(w, mint, tokens)
}

// pumpMint makes a pump.fun style mint address (base58, ending in "pump").
func pumpMint(parts ...string) string {
	k := fakeKey(parts...)
	return k[:len(k)-4] + "pump"
}

// --- state (s.mu held) -----------------------------------------------------------------

func (s *Server) nextSlotLocked() uint64 {
	s.slot += 1 + s.rng.Uint64N(3)
	return s.slot
}

func (s *Server) walletLocked(w string) *walletState {
	ws := s.wallets[w]
	if ws == nil {
		ws = &walletState{holdings: make(map[string]*holding)}
		s.wallets[w] = ws
	}
	return ws
}

// autoFillLocked gives a never-seen wallet Config.AutoPositions holdings with positions.
func (s *Server) autoFillLocked(w string) {
	if _, known := s.wallets[w]; known || s.cfg.AutoPositions <= 0 {
		s.walletLocked(w)
		return
	}
	s.walletLocked(w)
	for i := range s.cfg.AutoPositions {
		mint := pumpMint("auto", w, strconv.Itoa(i))
		tokens := (s.rng.Uint64N(900) + 100) * 1_000 * tokenUnit
		s.openPositionLocked(w, mint, tokens)
	}
	s.log.Info().Str("wallet", w).Int("positions", s.cfg.AutoPositions).Msg("auto positions created")
}

func (s *Server) setHoldingLocked(w, mint string, tokens uint64) *holding {
	ws := s.walletLocked(w)
	h := ws.holdings[mint]
	if h == nil {
		h = &holding{mint: mint, account: fakeKey("ata", w, mint)}
		ws.holdings[mint] = h
		ws.mints = append(ws.mints, mint)
	}
	h.tokens = tokens
	h.slot = s.nextSlotLocked()
	h.enc = mustJSON(msgBalance{Type: "balance_update", WalletPubkey: w, Mint: mint,
		TokenAccount: h.account, TokenProgram: tokenProgramID, Tokens: tokens, Slot: h.slot})
	s.broadcastLocked(w, h.enc)
	return h
}

func (s *Server) openPositionLocked(w, mint string, tokens uint64) *position {
	ws := s.walletLocked(w)
	h := ws.holdings[mint]
	if h == nil {
		h = s.setHoldingLocked(w, mint, tokens)
	}
	id := s.nextPosID
	s.nextPosID++
	price := 20_000 + s.rng.Uint64N(80_000) // quote units (lamports) per whole token
	p := &position{
		id: id, wallet: w, mint: mint, account: h.account, tokens: tokens,
		price: price, mark: price, entry: mulDiv(tokens, price, tokenUnit),
		slot: s.nextSlotLocked(), openedAtMs: time.Now().UnixMilli(),
	}
	if id%2 == 1 {
		p.market = &marketContext{MarketType: "pump_fun", PumpFun: &struct{}{}}
	} else {
		p.market = &marketContext{MarketType: "pump_swap", PumpSwap: &pumpSwapCtx{Pool: fakeKey("pool", mint)}}
	}
	sym := "SIM" + strconv.FormatUint(id, 10)
	p.opened = mustJSON(msgPositionOpened{
		Type: "position_opened", PositionID: id, WalletPubkey: w, Mint: mint,
		TokenAccount: p.account, TokenProgram: tokenProgramID, Tokens: tokens,
		EntryQuoteUnits: p.entry, MarketContext: p.market, Slot: p.slot,
		TokenName: "Simulated " + sym, TokenSymbol: sym, TokenDecimals: tokenDecimals,
		TokenPriceQuote: price, MarketCapQuote: price * tokenSupply,
		PoolLiquidityQuote: 30_000_000_000 + s.rng.Uint64N(50_000_000_000), OpenedAtMs: p.openedAtMs,
	})
	s.positions[id] = p
	s.posGen.Add(1)
	s.broadcastLocked(w, p.opened)
	return p
}

func (s *Server) closePositionLocked(p *position, reason string) {
	delete(s.positions, p.id)
	s.posGen.Add(1)
	s.broadcastLocked(p.wallet, mustJSON(msgPositionClosed{Type: "position_closed", PositionID: p.id,
		WalletPubkey: p.wallet, Mint: p.mint, TokenAccount: p.account, Reason: reason, Slot: s.nextSlotLocked()}))
}

// exitLocked sends an exit signal for p to target (or every session seeing p's wallet)
// and returns how many sessions got it.
func (s *Server) exitLocked(p *position, reason string, target *conn, level *uint32, sellTokens *uint64, slippageBps uint64) int {
	now := time.Now().UnixMilli()
	if now <= p.lastTrigMs {
		now = p.lastTrigMs + 1 // distinct triggered_at_ms per position: it is part of the dedup id
	}
	p.lastTrigMs = now
	// Move the mark price: exits for profit sit above entry, the others below.
	switch reason {
	case "stop_loss", "trailing_stop", "timeout":
		p.mark = p.price * (60 + s.rng.Uint64N(35)) / 100
	default:
		p.mark = p.price * (120 + s.rng.Uint64N(200)) / 100
	}
	proceeds := mulDiv(p.tokens, p.mark, tokenUnit)
	if slippageBps > 0 {
		proceeds -= proceeds * min(slippageBps, 10_000) / 10_000 / 4
	}
	m := msgExit{
		Type: "exit_signal_with_tx", PositionID: p.id, WalletPubkey: p.wallet, Mint: p.mint,
		TokenAccount: p.account, TokenProgram: tokenProgramID, PositionTokens: p.tokens,
		ProfitUnits: int64(proceeds) - int64(p.entry), Reason: reason, TriggeredAtMs: now,
		MarketContext: p.market, SellTokens: sellTokens, LevelIndex: level,
		UnsignedTxB64: fakeUnsignedTx(420+int(p.id%7)*16, "tx", strconv.FormatUint(p.id, 10),
			strconv.FormatInt(now, 10), strconv.FormatUint(slippageBps, 10)),
	}
	n := 0
	send := func(c *conn) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.seesLocked(p.wallet) {
			return
		}
		m.SessionID = c.sessionID
		b := mustJSON(m)
		c.enqueueLocked(outItem{op: opText, payload: b, stamp: s.cfg.StampSendTime, exit: true})
		n++
	}
	if target != nil {
		send(target)
	} else {
		for c := range s.conns {
			send(c)
		}
	}
	if s.cfg.ExitCloses && level == nil {
		s.closePositionLocked(p, reason)
	}
	return n
}

func (s *Server) broadcastLocked(wallet string, payload []byte) {
	for c := range s.conns {
		c.mu.Lock()
		if c.seesLocked(wallet) {
			c.enqueueLocked(outItem{op: opText, payload: payload})
		}
		c.mu.Unlock()
	}
}

// seenLocked reports whether some configured session sees wallet.
func (s *Server) seenLocked(wallet string) bool {
	for c := range s.conns {
		c.mu.Lock()
		ok := c.seesLocked(wallet)
		c.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

func (s *Server) sortedIDsLocked(keep func(*position) bool) []uint64 {
	ids := make([]uint64, 0, len(s.positions))
	for id, p := range s.positions {
		if keep == nil || keep(p) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// snapshotLocked returns the balance_update and position_opened frames for wallets,
// in a stable order: balances by wallet then mint insertion order, positions by id.
func (s *Server) snapshotLocked(wallets []string) [][]byte {
	var out [][]byte
	set := make(map[string]bool, len(wallets))
	for _, w := range wallets {
		set[w] = true
		ws := s.wallets[w]
		if ws == nil {
			continue
		}
		for _, m := range ws.mints {
			if h := ws.holdings[m]; h.tokens > 0 {
				out = append(out, h.enc)
			}
		}
	}
	for _, id := range s.sortedIDsLocked(func(p *position) bool { return set[p.wallet] }) {
		out = append(out, s.positions[id].opened)
	}
	return out
}

// findLocked resolves a close/exit selector among the positions of c's wallets.
func (s *Server) findLocked(c *conn, sel selector) *position {
	if sel.byID {
		p := s.positions[sel.id]
		if p == nil || !c.sees(p.wallet) {
			return nil
		}
		return p
	}
	for _, id := range s.sortedIDsLocked(nil) {
		if p := s.positions[id]; p.account == sel.account && c.sees(p.wallet) {
			return p
		}
	}
	return nil
}

// --- programmatic API --------------------------------------------------------------------

// AddHolding sets wallet's balance of mint to tokens (creating the holding) and sends a
// balance_update to every session configured with wallet. The holding is part of the
// snapshot re-emitted after every configure while tokens > 0.
func (s *Server) AddHolding(wallet, mint string, tokens uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setHoldingLocked(wallet, mint, tokens)
}

// OpenPosition opens a position (creating a holding of tokens if wallet has none of
// mint, with its balance_update) and sends position_opened to every session configured
// with wallet. It returns the new position id.
func (s *Server) OpenPosition(wallet, mint string, tokens uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openPositionLocked(wallet, mint, tokens).id
}

// ClosePosition closes an open position with reason, sending position_closed. It
// reports whether the position was open.
func (s *Server) ClosePosition(id uint64, reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.positions[id]
	if p == nil {
		return false
	}
	s.closePositionLocked(p, reason)
	return true
}

// Positions returns the open positions ordered by id.
func (s *Server) Positions() []Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Position
	for _, id := range s.sortedIDsLocked(nil) {
		out = append(out, s.positions[id].public())
	}
	return out
}

// SendExitSignal sends exit_signal_with_tx for an open position to every session
// configured with its wallet (each with its own session_id).
func (s *Server) SendExitSignal(positionID uint64, reason string) error {
	return s.sendExit(positionID, reason, nil, nil)
}

// SendLadderExit sends a partial take-profit exit (reason "target_profit") carrying
// level_index and sell_tokens.
func (s *Server) SendLadderExit(positionID uint64, level uint32, sellTokens uint64) error {
	return s.sendExit(positionID, "target_profit", &level, &sellTokens)
}

func (s *Server) sendExit(id uint64, reason string, level *uint32, sell *uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.positions[id]
	if p == nil {
		return ErrUnknownPosition
	}
	if s.exitLocked(p, reason, nil, level, sell, 0) == 0 {
		return ErrNoSession
	}
	return nil
}

// SendPnL queues a burst of n pnl_update frames for an open position to every session
// configured with its wallet, in order with other queued frames.
func (s *Server) SendPnL(positionID uint64, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.positions[positionID]
	if p == nil {
		return ErrUnknownPosition
	}
	sent := 0
	for c := range s.conns {
		c.mu.Lock()
		if c.seesLocked(p.wallet) && n > 0 {
			c.enqueueLocked(outItem{pnl: &pnlPos{id: p.id, tokens: p.tokens, entry: p.entry, price: p.price, base: p.price}, pnlN: n})
			sent++
		}
		c.mu.Unlock()
	}
	if sent == 0 {
		return ErrNoSession
	}
	return nil
}

// SendRaw sends text as one text frame, verbatim, to every open connection.
func (s *Server) SendRaw(text []byte) { s.sendAll(opText, text) }

// SendBinary sends b as one binary frame to every open connection.
func (s *Server) SendBinary(b []byte) { s.sendAll(opBinary, b) }

func (s *Server) sendAll(op byte, b []byte) {
	b = slices.Clone(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.enqueue(outItem{op: op, payload: b})
	}
}

// DropConnections closes every open connection abruptly (no close frame) and returns
// how many it dropped. Queued frames are lost, as on a real network failure.
func (s *Server) DropConnections() int {
	conns := s.snapshotConns()
	for _, c := range conns {
		c.drop("DropConnections")
	}
	return len(conns)
}

// Stall makes every open connection stop sending, processing commands and answering
// WebSocket pings for d.
func (s *Server) Stall(d time.Duration) {
	for _, c := range s.snapshotConns() {
		c.stall(d)
	}
}

func (s *Server) snapshotConns() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// SetPnLRate changes the per-session pnl_update rate (messages per second) at run time.
func (s *Server) SetPnLRate(perSecond float64) {
	if perSecond < 0 || math.IsNaN(perSecond) || math.IsInf(perSecond, 0) {
		perSecond = 0
	}
	s.pnlRateBits.Store(math.Float64bits(perSecond))
}

func (s *Server) pnlRate() float64 { return math.Float64frombits(s.pnlRateBits.Load()) }

// SetScheduledExits pauses (false) or resumes (true) the exits sent every
// ExitEvery, for example so that a client can be seen to catch up on what it
// received.
func (s *Server) SetScheduledExits(on bool) { s.exitsPaused.Store(!on) }

// SetAPIKey changes the required API key for new connections ("" accepts any).
func (s *Server) SetAPIKey(key string) { s.apiKey.Store(&key) }

// SetWithholdHello makes new sessions (on) never get hello_ok nor any answer,
// like Config.WithholdHello; sessions already open keep their behaviour.
func (s *Server) SetWithholdHello(on bool) { s.withholdHello.Store(on) }

// SetRefuseStatus makes new upgrade requests fail with this HTTP status (for example
// 503), to exercise client backoff. 0 restores normal service.
func (s *Server) SetRefuseStatus(status int) { s.refuseStatus.Store(int64(status)) }

// --- observation -------------------------------------------------------------------------

func (s *Server) record(f ClientFrame) {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	s.recCounter++
	s.received = append(s.received, f)
	// Trim in chunks (down to 3/4 of the bound) so a chatty client costs O(1) per frame.
	if len(s.received) > s.cfg.MaxRecorded {
		over := len(s.received) - s.cfg.MaxRecorded*3/4
		s.received = slices.Delete(s.received, 0, over)
		s.recBase += over
	}
	close(s.recNotify)
	s.recNotify = make(chan struct{})
}

// Received returns a copy of the client frames received so far, oldest first (at most
// Config.MaxRecorded; the oldest are forgotten beyond that).
func (s *Server) Received() []ClientFrame {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	return slices.Clone(s.received)
}

// WaitFor returns the first received client frame (from the beginning of the record)
// for which match is true, waiting for new frames until ctx ends.
func (s *Server) WaitFor(ctx context.Context, match func(ClientFrame) bool) (ClientFrame, error) {
	next := 0 // absolute index of the next frame to examine
	for {
		s.recMu.Lock()
		start := max(next-s.recBase, 0)
		pending := slices.Clone(s.received[start:])
		next = s.recBase + len(s.received)
		ch := s.recNotify
		s.recMu.Unlock()
		for _, f := range pending {
			if match(f) {
				return f, nil
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ClientFrame{}, ctx.Err()
		}
	}
}

// Connections returns the number of WebSocket sessions accepted so far.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nConns
}

// ActiveSessions returns the number of WebSocket sessions open now.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// LastConfigure returns the raw bytes of the last valid configure received, or nil.
func (s *Server) LastConfigure() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lastConfig)
}

// Stats returns the cumulative counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Connections: s.nConns, Active: len(s.conns), Refused: s.refused}
	s.mu.Unlock()
	s.recMu.Lock()
	st.ClientFrames = s.recCounter
	s.recMu.Unlock()
	st.FramesSent = s.framesSent.Load()
	st.PnLSent = s.pnlSent.Load()
	st.ExitSignalsSent = s.exitsSent.Load()
	st.Drops = s.drops.Load()
	st.Stalls = s.stalls.Load()
	st.TLSHellos = s.tlsHellos.Load()
	return st
}

// --- HTTP --------------------------------------------------------------------------------

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	if !s.track() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	s.startBackground()

	if st := int(s.refuseStatus.Load()); st != 0 {
		s.refuse(w, st, "refused", "refused by simulator (SetRefuseStatus)")
		return
	}
	key := r.Header.Get("x-api-key")
	if want := *s.apiKey.Load(); want != "" && subtle.ConstantTimeCompare([]byte(key), []byte(want)) != 1 {
		s.refuse(w, http.StatusUnauthorized, "unauthorized", "missing or invalid x-api-key header")
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.log.Debug().Err(err).Msg("upgrade failed")
		return
	}
	c, err := s.register(ws, key)
	if err != nil {
		s.log.Warn().Err(err).Msg("session refused")
		// No writer exists yet: gorilla may write directly.
		_ = ws.WriteMessage(websocket.TextMessage, encodeError(CodeSessionLimit, err.Error()))
		_ = ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "session limit"), time.Now().Add(time.Second))
		ws.Close()
		return
	}
	c.run()
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.mu.Lock()
	s.refused++
	s.mu.Unlock()
	s.log.Info().Int("status", status).Msg("upgrade refused")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(mustJSON(map[string]string{"error": code, "message": msg}), '\n'))
}

func (s *Server) register(ws *websocket.Conn, key string) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if lim := s.cfg.Limits.MaxSessionsPerAPIKey; s.cfg.EnforceSessionLimit && uint64(s.perKey[key]) >= lim {
		s.refused++
		return nil, fmt.Errorf("max_sessions_per_api_key %d reached", lim)
	}
	s.nConns++
	c := newConn(s, ws, key, s.nConns, s.nextSession)
	s.nextSession++
	s.conns[c] = struct{}{}
	s.perKey[key]++
	return c, nil
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if s.perKey[c.key]--; s.perKey[c.key] <= 0 {
		delete(s.perKey, c.key)
	}
}
