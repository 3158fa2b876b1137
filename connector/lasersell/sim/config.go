package sim

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// HelloOrder chooses when the simulator sends hello_ok.
type HelloOrder string

// The hello orders found in public sources, plus a test helper mode.
const (
	// HelloServerFirst sends hello_ok as soon as the socket opens (the stream docs' order).
	HelloServerFirst HelloOrder = "server-first"
	// HelloAfterConfigure sends hello_ok only after the client's first valid configure
	// (the order the official SDKs implement).
	HelloAfterConfigure HelloOrder = "after-configure"
	// HelloAlternate uses server-first on odd connection numbers (1, 3, ...) and
	// after-configure on even ones, so a reconnecting client sees both orders.
	HelloAlternate HelloOrder = "alternate"
)

// String implements flag.Value.
func (h *HelloOrder) String() string {
	if h == nil {
		return ""
	}
	return string(*h)
}

// Set implements flag.Value.
func (h *HelloOrder) Set(v string) error {
	switch o := HelloOrder(strings.TrimSpace(v)); o {
	case HelloServerFirst, HelloAfterConfigure, HelloAlternate:
		*h = o
		return nil
	default:
		return fmt.Errorf("unknown hello order %q (want %s, %s or %s)", v, HelloServerFirst, HelloAfterConfigure, HelloAlternate)
	}
}

// serverFirst reports whether connection number n (1-based) gets hello_ok on open.
func (h HelloOrder) serverFirst(n int) bool {
	switch h {
	case HelloAfterConfigure:
		return false
	case HelloAlternate:
		return n%2 == 1
	default:
		return true
	}
}

// Limits is the hello_ok "limits" object. Zero fields take the defaults of DefaultLimits.
type Limits struct {
	HiCapacity                uint64 `json:"hi_capacity"`
	PnLFlushMs                uint64 `json:"pnl_flush_ms"`
	MaxPositionsPerSession    uint64 `json:"max_positions_per_session"`
	MaxWalletsPerSession      uint64 `json:"max_wallets_per_session"`
	MaxPositionsPerWallet     uint64 `json:"max_positions_per_wallet"`
	MaxSessionsPerAPIKey      uint64 `json:"max_sessions_per_api_key"`
	MaxWatchWalletsPerSession uint64 `json:"max_watch_wallets_per_session"`
}

// DefaultLimits returns the limits the production server advertises.
func DefaultLimits() Limits {
	return Limits{
		HiCapacity:                1024,
		PnLFlushMs:                1000,
		MaxPositionsPerSession:    100,
		MaxWalletsPerSession:      10,
		MaxPositionsPerWallet:     20,
		MaxSessionsPerAPIKey:      5,
		MaxWatchWalletsPerSession: 10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	fill := func(v *uint64, def uint64) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&l.HiCapacity, d.HiCapacity)
	fill(&l.PnLFlushMs, d.PnLFlushMs)
	fill(&l.MaxPositionsPerSession, d.MaxPositionsPerSession)
	fill(&l.MaxWalletsPerSession, d.MaxWalletsPerSession)
	fill(&l.MaxPositionsPerWallet, d.MaxPositionsPerWallet)
	fill(&l.MaxSessionsPerAPIKey, d.MaxSessionsPerAPIKey)
	fill(&l.MaxWatchWalletsPerSession, d.MaxWatchWalletsPerSession)
	return l
}

// Config configures a Server. The zero value is a quiet, protocol-faithful server on
// DefaultPath with no scheduled traffic and no faults; DefaultConfig and DemoConfig
// return ready-made starting points. Durations of zero disable the behaviour.
type Config struct {
	// Addr is the listen address used by Start("") (default "127.0.0.1:8082", the SDKs'
	// local port on loopback; pass "0.0.0.0:8082" or ":8082" to accept other hosts).
	Addr string
	// Path is the WebSocket endpoint path (default "/v1/ws").
	Path string
	// APIKey is required in the x-api-key upgrade header when non-empty (401 otherwise).
	APIKey string
	// HelloOrder selects when hello_ok is sent (default server-first).
	HelloOrder HelloOrder
	// FirstSessionID is the session_id of the first connection; later ones increment (default 1).
	FirstSessionID uint64
	// Limits advertised in hello_ok and enforced on configure/update commands.
	Limits Limits
	// LegacyLimits omits max_watch_wallets_per_session from hello_ok, like older servers.
	LegacyLimits bool
	// ExtraLimits adds unknown numeric fields to the limits object (tolerance tests).
	ExtraLimits map[string]uint64
	// EnforceSessionLimit refuses a connection (error frame "session_limit", then close 1008)
	// when the API key already has Limits.MaxSessionsPerAPIKey open sessions.
	EnforceSessionLimit bool
	// Seed makes generated names, prices and PnL walks reproducible (0 means 1).
	Seed uint64
	// AutoPositions gives every wallet the simulator has never seen, when a client first
	// configures it, that many holdings each with an open position (0 = none).
	AutoPositions int
	// CloseReason is the position_closed reason answering a client close_position (default "manual").
	CloseReason string
	// WriteTimeout drops a connection whose client does not read for this long (default 10s).
	WriteTimeout time.Duration

	// PnLRate is the number of pnl_update messages per second sent to each configured
	// session, spread round-robin over the open positions it can see (0 = none).
	PnLRate float64
	// ExitEvery sends an exit_signal_with_tx for the next open position (round-robin) to
	// every session that sees it, at this interval.
	ExitEvery time.Duration
	// ExitCloses closes a position (position_closed with the exit reason) right after each
	// scheduled or requested exit signal.
	ExitCloses bool
	// OpenEvery opens a new position on a wallet some session has configured, at this interval
	// (closing that wallet's oldest position with reason "timeout" when it is at its limit).
	OpenEvery time.Duration
	// LiquidityEvery sends a liquidity_snapshot (next visible position) per session.
	LiquidityEvery time.Duration
	// TradeTickEvery sends a trade_tick (next visible position) per session.
	TradeTickEvery time.Duration
	// UnknownTypeEvery sends a message of a type the SDKs do not know, per session.
	UnknownTypeEvery time.Duration
	// UnknownType is that message's type (default "market_regime").
	UnknownType string

	// PingEvery sends WebSocket protocol-level pings from the server at this interval.
	PingEvery time.Duration
	// DropEvery closes each connection abruptly (TCP close, no close frame) this long after it opened.
	DropEvery time.Duration
	// DropAfterFrames closes each connection abruptly after it has sent this many data frames.
	DropAfterFrames int
	// GarbageEvery sends, in rotation, a non-JSON text frame, truncated JSON, a JSON value
	// that is not an object, an object without "type", and a binary frame.
	GarbageEvery time.Duration
	// StallEvery stalls each connection for StallFor at this interval: nothing is sent,
	// commands are not processed and WebSocket pings are not answered.
	StallEvery time.Duration
	// StallFor is the length of a scheduled stall.
	StallFor time.Duration

	// WithholdHello accepts WebSocket sessions but never sends hello_ok nor
	// processes their frames (they are still recorded): a peer stuck before its
	// handshake. Server.SetWithholdHello changes it for new connections.
	WithholdHello bool

	// TLSCert and TLSKey are PEM files of a certificate and its key: given
	// both, the server speaks wss:// (TLS 1.2 or newer); given neither, ws://.
	TLSCert string
	TLSKey  string

	// StampSendTime adds "sim_sent_ns" (Unix nanoseconds at the socket write) to every
	// exit_signal_with_tx, for latency benchmarks. Not part of the real protocol.
	StampSendTime bool
	// MaxRecorded bounds the client frames kept for Received (default 100000; oldest dropped).
	MaxRecorded int
}

// Defaults used when Config fields are zero.
const (
	DefaultAddr        = "127.0.0.1:8082"
	DefaultPath        = "/v1/ws"
	DefaultCloseReason = "manual"
	DefaultUnknownType = "market_regime"
)

// DefaultConfig returns a faithful, quiet server: server-first hello, default limits,
// session limit enforced, no scheduled traffic and no faults.
func DefaultConfig() Config {
	return Config{
		Addr:                DefaultAddr,
		Path:                DefaultPath,
		HelloOrder:          HelloServerFirst,
		FirstSessionID:      1,
		Limits:              DefaultLimits(),
		EnforceSessionLimit: true,
		Seed:                1,
		CloseReason:         DefaultCloseReason,
		WriteTimeout:        10 * time.Second,
		UnknownType:         DefaultUnknownType,
		MaxRecorded:         100000,
	}
}

// DemoConfig returns DefaultConfig with live-looking traffic for demos and docker-compose:
// three auto positions per configured wallet, PnL, periodic exits, openings, liquidity,
// trade ticks, an occasional unknown message type and server pings.
func DemoConfig() Config {
	c := DefaultConfig()
	c.AutoPositions = 3
	c.PnLRate = 20
	c.ExitEvery = 7 * time.Second
	c.OpenEvery = 11 * time.Second
	c.LiquidityEvery = 3 * time.Second
	c.TradeTickEvery = time.Second
	c.UnknownTypeEvery = 30 * time.Second
	c.PingEvery = 15 * time.Second
	return c
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.HelloOrder == "" {
		c.HelloOrder = HelloServerFirst
	}
	if c.FirstSessionID == 0 {
		c.FirstSessionID = 1
	}
	c.Limits = c.Limits.withDefaults()
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.CloseReason == "" {
		c.CloseReason = DefaultCloseReason
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.UnknownType == "" {
		c.UnknownType = DefaultUnknownType
	}
	if c.MaxRecorded <= 0 {
		c.MaxRecorded = 100000
	}
	return c
}

// Validate reports the first configuration problem, naming the flag.
func (c Config) Validate() error {
	var errs []error
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("path: %q must start with /", c.Path))
	}
	if c.HelloOrder != "" {
		h := c.HelloOrder
		if err := h.Set(string(c.HelloOrder)); err != nil {
			errs = append(errs, fmt.Errorf("hello-order: %w", err))
		}
	}
	if c.PnLRate < 0 || c.PnLRate != c.PnLRate {
		errs = append(errs, fmt.Errorf("pnl-rate: %v must be >= 0", c.PnLRate))
	}
	if c.AutoPositions < 0 {
		errs = append(errs, fmt.Errorf("auto-positions: %d must be >= 0", c.AutoPositions))
	}
	if c.DropAfterFrames < 0 {
		errs = append(errs, fmt.Errorf("drop-after-frames: %d must be >= 0", c.DropAfterFrames))
	}
	if c.StallEvery > 0 && c.StallFor <= 0 {
		errs = append(errs, errors.New("stall-for: must be > 0 when stall-every is set"))
	}
	durations := map[string]time.Duration{
		"exit-every": c.ExitEvery, "open-every": c.OpenEvery, "liquidity-every": c.LiquidityEvery,
		"trade-tick-every": c.TradeTickEvery, "unknown-type-every": c.UnknownTypeEvery,
		"ping-every": c.PingEvery, "drop-every": c.DropEvery, "garbage-every": c.GarbageEvery,
		"stall-every": c.StallEvery, "stall-for": c.StallFor, "write-timeout": c.WriteTimeout,
	}
	for _, name := range []string{"exit-every", "open-every", "liquidity-every", "trade-tick-every",
		"unknown-type-every", "ping-every", "drop-every", "garbage-every", "stall-every", "stall-for", "write-timeout"} {
		if durations[name] < 0 {
			errs = append(errs, fmt.Errorf("%s: %v must be >= 0", name, durations[name]))
		}
	}
	if err := c.validateTLS(); err != nil {
		errs = append(errs, err)
	}
	if c.UnknownType != "" && !validTypeToken(c.UnknownType) {
		errs = append(errs, fmt.Errorf("unknown-type: %q is not a plain identifier", c.UnknownType))
	}
	return errors.Join(errs...)
}

func validTypeToken(s string) bool {
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// RegisterFlags binds every field to fs, using the current values as defaults.
// Typical use: cfg := sim.DemoConfig(); cfg.RegisterFlags(fs); fs.Parse(args).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", c.Addr, "listen address (host:port; 0.0.0.0:PORT to accept other hosts)")
	fs.StringVar(&c.Path, "path", c.Path, "WebSocket endpoint path")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "required x-api-key header value (empty: any key accepted)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate (chain) to serve wss:// with TLS 1.2+; needs -tls-key")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of -tls-cert")
	if c.HelloOrder == "" {
		c.HelloOrder = HelloServerFirst
	}
	fs.Var(&c.HelloOrder, "hello-order", "when hello_ok is sent: server-first | after-configure | alternate")
	fs.Uint64Var(&c.FirstSessionID, "first-session-id", c.FirstSessionID, "session_id of the first connection")
	fs.Uint64Var(&c.Limits.HiCapacity, "limit-hi-capacity", c.Limits.HiCapacity, "hello_ok limits.hi_capacity")
	fs.Uint64Var(&c.Limits.PnLFlushMs, "limit-pnl-flush-ms", c.Limits.PnLFlushMs, "hello_ok limits.pnl_flush_ms")
	fs.Uint64Var(&c.Limits.MaxPositionsPerSession, "limit-max-positions-per-session", c.Limits.MaxPositionsPerSession, "hello_ok limits.max_positions_per_session")
	fs.Uint64Var(&c.Limits.MaxWalletsPerSession, "limit-max-wallets-per-session", c.Limits.MaxWalletsPerSession, "hello_ok limits.max_wallets_per_session (enforced)")
	fs.Uint64Var(&c.Limits.MaxPositionsPerWallet, "limit-max-positions-per-wallet", c.Limits.MaxPositionsPerWallet, "hello_ok limits.max_positions_per_wallet")
	fs.Uint64Var(&c.Limits.MaxSessionsPerAPIKey, "limit-max-sessions-per-api-key", c.Limits.MaxSessionsPerAPIKey, "hello_ok limits.max_sessions_per_api_key")
	fs.Uint64Var(&c.Limits.MaxWatchWalletsPerSession, "limit-max-watch-wallets-per-session", c.Limits.MaxWatchWalletsPerSession, "hello_ok limits.max_watch_wallets_per_session (enforced)")
	fs.BoolVar(&c.LegacyLimits, "legacy-limits", c.LegacyLimits, "omit max_watch_wallets_per_session from hello_ok (older servers)")
	fs.BoolVar(&c.EnforceSessionLimit, "enforce-session-limit", c.EnforceSessionLimit, "refuse sessions beyond max_sessions_per_api_key")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed for generated names, prices and PnL")
	fs.IntVar(&c.AutoPositions, "auto-positions", c.AutoPositions, "holdings+open positions created for each newly configured wallet")
	fs.StringVar(&c.CloseReason, "close-reason", c.CloseReason, "position_closed reason answering close_position")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "drop a client that does not read for this long")
	fs.Float64Var(&c.PnLRate, "pnl-rate", c.PnLRate, "pnl_update messages per second per configured session (0: off)")
	fs.DurationVar(&c.ExitEvery, "exit-every", c.ExitEvery, "send a scheduled exit_signal_with_tx at this interval (0: off)")
	fs.BoolVar(&c.ExitCloses, "exit-closes", c.ExitCloses, "close the position after each exit signal")
	fs.DurationVar(&c.OpenEvery, "open-every", c.OpenEvery, "open a new position on a configured wallet at this interval (0: off)")
	fs.DurationVar(&c.LiquidityEvery, "liquidity-every", c.LiquidityEvery, "liquidity_snapshot interval per session (0: off)")
	fs.DurationVar(&c.TradeTickEvery, "trade-tick-every", c.TradeTickEvery, "trade_tick interval per session (0: off)")
	fs.DurationVar(&c.UnknownTypeEvery, "unknown-type-every", c.UnknownTypeEvery, "interval of a message with an unknown future type (0: off)")
	fs.StringVar(&c.UnknownType, "unknown-type", c.UnknownType, "type of the unknown future message")
	fs.DurationVar(&c.PingEvery, "ping-every", c.PingEvery, "WebSocket ping interval from the server (0: off)")
	fs.DurationVar(&c.DropEvery, "drop-every", c.DropEvery, "abruptly drop each connection this long after it opened (0: off)")
	fs.IntVar(&c.DropAfterFrames, "drop-after-frames", c.DropAfterFrames, "abruptly drop each connection after this many data frames (0: off)")
	fs.DurationVar(&c.GarbageEvery, "garbage-every", c.GarbageEvery, "send malformed text/binary frames at this interval (0: off)")
	fs.DurationVar(&c.StallEvery, "stall-every", c.StallEvery, "stall each connection at this interval (0: off)")
	fs.DurationVar(&c.StallFor, "stall-for", c.StallFor, "length of a scheduled stall")
	fs.BoolVar(&c.WithholdHello, "withhold-hello", c.WithholdHello, "fault: accept sessions but never send hello_ok nor answer (a peer stuck before its handshake)")
	fs.BoolVar(&c.StampSendTime, "stamp-send-time", c.StampSendTime, "add sim_sent_ns to exit signals (latency benchmarks; not in the real protocol)")
	fs.IntVar(&c.MaxRecorded, "max-recorded", c.MaxRecorded, "client frames kept in memory for inspection")
}
