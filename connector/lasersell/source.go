// Package lasersell is the LaserSell Exit Intelligence Stream source: one
// WebSocket session per configured session name, kept open and reconnected
// with the SDKs' backoff, every server frame published verbatim into
// JetStream, commands validated and forwarded upstream, the desired configure
// and the open positions kept in KV so that reconnects and restarts resume
// where the operator left off.
//
// Routing (S = session name, payload = the frame's bytes as received):
//
//	exit_signal_with_tx   lasersell.S.exit.<wallet_pubkey>          high lane
//	pnl_update            lasersell.S.pnl.<position_id>             low lane
//	any other type        lasersell.S.event.<type>.<key>            high lane
//	not a JSON object     lasersell.S.malformed                     high lane
//	(binary frames, invalid JSON, objects without a string "type")
//
// key is the position_id when the frame has one (position_opened,
// position_closed, liquidity_snapshot, trade_tick, unknown types about a
// position), else the wallet_pubkey (balance_update), else "_" (hello_ok,
// pong, error). Nats-Msg-Id makes the facts a reconnect re-emits land once:
//
//	exit_signal_with_tx   S:exit:<session_id>:<position_id>:<triggered_at_ms>:<level_index|->
//	position_opened       S:pos-open:<position_id>
//	position_closed       S:pos-close:<position_id>
//	balance_update        S:balance:<wallet_pubkey>:<mint>:<slot>:<tokens|->
//
// The session name leads every id because JetStream deduplicates per stream
// and two sessions watching the same wallet receive the same facts. The
// balance id carries the amount: two real updates in one slot are two facts.
//
// Positions closed while the connector was disconnected or stopped never get
// their position_closed; after every (re)connect the server re-announces the
// open ones, and the positions of configured wallets it does not re-announce
// are removed (see reconcile).
//
// State in KV (keys scoped by the runtime under lasersell.S.):
//
//	CONNECTOR_DESIRED   configure   {"configure":{...},"origin":...,"updated_at":...}
//	LASERSELL_POSITIONS <id>        one open position (wallet, mint, token account, open time,
//	                                per-position strategy override, deadline request time)
package lasersell

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// desiredKey is the key of the desired configure in BucketDesired.
const desiredKey = "configure"

// writeQueue bounds the frames waiting for the upstream writer.
const writeQueue = 256

// readLimit bounds one upstream frame; exit signals carry a transaction of a
// few KiB, so this only stops a runaway server.
const readLimit = 4 << 20

// Source is the LaserSell source of one session. Build it with New.
type Source struct {
	cfg  Config
	host *connector.Host
	log  zerolog.Logger
	// malformedLog is sampled: a broken upstream must not flood the logs.
	malformedLog zerolog.Logger
	desiredKV    *connector.Store
	positionsKV  *connector.Store
	envConfigure *Configure
	dialer       *websocket.Dialer
	header       http.Header

	// loaded is closed once Run has read the desired state and positions;
	// commands wait for it so they never race the start-up seeding.
	loaded chan struct{}
	// cmdMu serializes state-changing commands: KV write, then send, in order.
	cmdMu sync.Mutex
	// wake nudges the deadline loop, persistWake the persist loop (capacity 1).
	wake        chan struct{}
	persistWake chan struct{}

	mu        sync.Mutex
	desired   *Configure
	limits    Limits
	conn      *conn // the current connection, nil while disconnected
	positions map[uint64]*position
	dirty     map[uint64]struct{} // positions whose KV entry is behind memory
	// reconciledTotal counts the positions reconcile removed, reconcileSkips
	// the reconciliations skipped because of upstream errors.
	reconciledTotal uint64
	reconcileSkips  uint64
}

// New builds the source on host, the runtime's host of the session cfg
// declares (see NewSession).
func New(cfg Config, host *connector.Host) (*Source, error) {
	if host == nil {
		return nil, errors.New("lasersell: a host is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("lasersell configuration: %w", err)
	}
	key, err := cfg.apiKey()
	if err != nil {
		return nil, err
	}
	initial, err := cfg.initialConfigure()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	hdr := http.Header{}
	hdr.Set("x-api-key", key)
	log := host.Log()
	return &Source{
		cfg: cfg, host: host, log: log,
		malformedLog: log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second}),
		desiredKV:    host.State(subjects.BucketDesired),
		positionsKV:  host.State(subjects.BucketPositions),
		envConfigure: initial,
		dialer: &websocket.Dialer{
			NetDialContext:   netDial,
			Proxy:            http.ProxyFromEnvironment,
			HandshakeTimeout: cfg.DialTimeout,
			TLSClientConfig:  tlsCfg,
			ReadBufferSize:   32 << 10,
			WriteBufferSize:  4 << 10,
		},
		header:      hdr,
		loaded:      make(chan struct{}),
		wake:        make(chan struct{}, 1),
		persistWake: make(chan struct{}, 1),
		positions:   map[uint64]*position{},
		dirty:       map[uint64]struct{}{},
	}, nil
}

// Commands implements connector.Source.
func (s *Source) Commands() []string { return commandNames() }

// commandNames lists the commands served on lasersell.<session>.cmd.<command>.
func commandNames() []string {
	return []string{
		typeConfigure, typeUpdateStrategy, typeUpdateWallets, typeUpdateWatchWallets,
		typeUpdatePositionStrategy, typeClosePosition, typeRequestExitSignal, typePing,
	}
}

// Run loads the desired state, then keeps the upstream session open until ctx
// ends. It returns nil at shutdown; retrying is always possible, so nothing
// upstream makes it fail.
func (s *Source) Run(ctx context.Context) error {
	if err := s.loadWithRetry(ctx); err != nil {
		return nil // ctx ended while loading
	}
	close(s.loaded)

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.deadlineLoop(ctx) })
	wg.Go(func() { s.persistLoop(ctx) })

	bo := connector.Backoff{Base: s.cfg.BackoffBase, Max: s.cfg.BackoffMax}
	// A refused API key or certificate does not fix itself in seconds: their
	// retries back off further, so a bad key never hammers the server (or
	// gets it banned), and a bad certificate (an expired one, a proxy not yet
	// trusted) never turns into a hot loop of handshakes.
	slowBo := connector.Backoff{Base: s.cfg.BackoffBase, Max: slowBackoffFactor * s.cfg.BackoffMax}
	failures := 0
	for {
		s.host.Report(connector.Status{State: connector.StateConnecting, Attempt: failures,
			Detail: map[string]any{"url": redactURL(s.cfg.URL)}})
		healthy, end := s.session(ctx)
		if ctx.Err() != nil {
			s.stopped(ctx)
			return nil
		}
		if healthy {
			// Established and streaming (or long-lived): the next attempt
			// waits the first delay again. Sessions that never got that far
			// keep doubling it (see conn.healthyLocked).
			bo.Reset()
			failures = 0
		}
		failures++
		var wait time.Duration
		if end.code == connector.ReasonAuth || end.code == connector.ReasonTLS {
			wait = slowBo.Next()
		} else {
			slowBo.Reset()
			wait = bo.Next()
		}
		s.host.Metrics().Reconnects.WithLabelValues(end.code).Inc()
		s.log.Warn().Str("reason", end.text).Str("reason_code", end.code).Int("attempt", failures).Bool("backoff_reset", healthy).Dur("backoff_ms", wait).Msg("upstream session ended; reconnecting")
		detail := map[string]any{"reason_code": end.code}
		s.host.Report(connector.Status{State: connector.StateDisconnected, Reason: end.text, Detail: detail})
		s.host.Report(connector.Status{State: connector.StateReconnecting, Reason: end.text, Attempt: failures,
			BackoffMS: wait.Milliseconds(), Detail: detail})
		if !connector.Sleep(ctx, wait) {
			s.stopped(ctx)
			return nil
		}
	}
}

// stopped records the final status. The runtime drains the lanes after Run
// returns, so the event still reaches JetStream.
func (s *Source) stopped(ctx context.Context) {
	s.host.Report(connector.Status{State: connector.StateStopped})
}

// loadWithRetry loads the state from KV, retrying with the reconnect backoff
// while JetStream is unavailable. It fails only when ctx ends.
func (s *Source) loadWithRetry(ctx context.Context) error {
	bo := connector.Backoff{Base: s.cfg.BackoffBase, Max: s.cfg.BackoffMax}
	return connector.Retry(ctx, bo, s.load, func(err error, wait time.Duration) {
		s.log.Error().Err(err).Dur("retry_in_ms", wait).Msg("could not load the LaserSell state from KV")
	})
}

// desiredDoc is the value of the desired-state KV entry.
type desiredDoc struct {
	Configure *Configure `json:"configure"`
	// Origin says what last changed it: "env" or "command:<name>".
	Origin    string `json:"origin"`
	UpdatedAt string `json:"updated_at"`
}

// load reads the desired configure (seeding it from the environment when KV
// has none) and the open positions.
func (s *Source) load(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var desired *Configure
	raw, err := s.desiredKV.Get(lctx, desiredKey)
	switch {
	case errors.Is(err, connector.ErrNotFound):
		if s.envConfigure != nil {
			if err := s.storeDesired(lctx, s.envConfigure, "env"); err != nil {
				return err
			}
			desired = s.envConfigure
			s.log.Info().Int("wallets", len(desired.WalletPubkeys)).Msg("desired configure seeded from the environment")
		} else {
			s.log.Warn().Str("subject", subjects.Command(s.host.Kind(), s.host.Name(), typeConfigure)).
				Msg("no configure yet (no LASERSELL_WALLETS, nothing in KV): the session stays unconfigured until one arrives")
		}
	case err != nil:
		return fmt.Errorf("read desired configure: %w", err)
	default:
		var doc desiredDoc
		if err := json.Unmarshal(raw, &doc); err != nil || doc.Configure == nil {
			// A damaged entry must not stop the session: fall back to the
			// environment, leave the entry for the operator to inspect.
			s.log.Error().Err(err).Msg("the desired configure in KV is unreadable; using the environment's (send a configure to replace it)")
			desired = s.envConfigure
			break
		}
		desired = doc.Configure
		if s.envConfigure != nil && !sameJSON(s.envConfigure, desired) {
			s.log.Warn().Str("origin", doc.Origin).Str("updated_at", doc.UpdatedAt).
				Msg("LASERSELL_WALLETS/strategy variables differ from the desired configure in KV; KV wins (latest operator intent)")
		}
		s.log.Info().Str("origin", doc.Origin).Int("wallets", len(desired.WalletPubkeys)).Msg("desired configure loaded from KV")
	}

	entries, err := s.positionsKV.List(lctx)
	if err != nil {
		return fmt.Errorf("read open positions: %w", err)
	}
	positions := make(map[uint64]*position, len(entries))
	for key, v := range entries {
		var p position
		if err := json.Unmarshal(v, &p); err != nil || p.PositionID == 0 && key != "0" {
			s.log.Warn().Str("key", key).Msg("skipping an unreadable position entry")
			continue
		}
		positions[p.PositionID] = &p
	}
	s.mu.Lock()
	s.desired = desired
	s.positions = positions
	s.mu.Unlock()
	if len(positions) > 0 {
		s.log.Info().Int("positions", len(positions)).Msg("open positions loaded from KV")
	}
	return nil
}

// storeDesired writes the desired configure to KV.
func (s *Source) storeDesired(ctx context.Context, c *Configure, origin string) error {
	b, err := json.Marshal(desiredDoc{Configure: c, Origin: origin, UpdatedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	if err != nil {
		return fmt.Errorf("encode desired configure: %w", err)
	}
	if err := s.desiredKV.Put(ctx, desiredKey, b); err != nil {
		return fmt.Errorf("store desired configure: %w", err)
	}
	return nil
}

func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// wakeDeadlines asks the deadline loop to recompute (positions, deadline or
// connectivity changed).
func (s *Source) wakeDeadlines() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// sessionEnd says why an upstream connection ended: code is one of the core's
// reconnect reason codes, text the human explanation (status reason, logs).
// Neither ever holds the API key. LaserSell needs no code of its own; here
// the codes mean:
//
//	dial               TCP connect failed, the network failed during the TLS
//	                   handshake, or the upgrade was refused (not 401/403)
//	auth               HTTP 401/403 on the upgrade: the API key was refused
//	tls                the server's certificate was refused (unknown authority,
//	                   another host name, expired), the server does not speak
//	                   TLS, or a TLS alert; retried slowly like auth (tls.go)
//	handshake_timeout  TCP up, but no TLS handshake, no upgrade answer or no
//	                   hello_ok in time (LASERSELL_DIAL_TIMEOUT)
//	read_timeout       nothing received (not even a pong) for LASERSELL_READ_TIMEOUT
//	closed_by_peer     close frame, EOF or reset from the server
//	protocol           oversized frame or WebSocket protocol violation
//	write              a write failed or the write queue stayed full
//	stopped            the connector is shutting down
type sessionEnd struct {
	code string
	text string
}

// slowBackoffFactor multiplies LASERSELL_BACKOFF_MAX for the retries after
// an authentication refusal or a TLS failure (2 s -> 30 s with the defaults).
const slowBackoffFactor = 15
