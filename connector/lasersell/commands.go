package lasersell

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/jetbridge/connector/connector"
)

// Command replies (merged into {"ok":true,...} by the runtime):
//
//	configure, update_strategy, update_wallets, update_watch_wallets, update_position_strategy:
//	  socket open:  {"applied":true,"sent":<frame written upstream>,"stored":<desired state>}
//	  disconnected: {"applied":false,"pending":"reconnect","stored":<desired state>}
//	  (also when the connection drops before the write; "pending":"write" when
//	  the write did not finish within the command timeout)
//	  The desired state is stored in KV first; it is what every reconnect and
//	  restart re-sends, so "pending" changes are never lost. "stored" is the
//	  whole desired configure (update_position_strategy: the position entry).
//	close_position, request_exit_signal: {"sent":<frame>} once written upstream;
//	  refused with "unknown_position" when the position is not open (not in
//	  LASERSELL_POSITIONS), nothing sent.
//	ping: {"sent":<frame>,"rtt_ms":<float>} once the pong arrives; refused with
//	  "timeout" when no pong comes within LASERSELL_PING_TIMEOUT.
//
// Refusals (before anything is sent) use the codes listed with CodeInvalidStrategy.

type stateReply struct {
	Applied bool            `json:"applied"`
	Sent    json.RawMessage `json:"sent,omitempty"`
	Pending string          `json:"pending,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Stored  any             `json:"stored"`
}

type sentReply struct {
	Sent  json.RawMessage `json:"sent"`
	RTTMS *float64        `json:"rtt_ms,omitempty"`
}

// Handle implements connector.Source.
func (s *Source) Handle(ctx context.Context, cmd connector.Command) (any, error) {
	select {
	case <-s.loaded:
	case <-ctx.Done():
		return nil, connector.Refuse(connector.CodeTimeout, "the LaserSell source has not loaded its state yet")
	}
	switch cmd.Name {
	case typeConfigure:
		return s.cmdConfigure(ctx, cmd.Body)
	case typeUpdateStrategy:
		return s.cmdUpdateStrategy(ctx, cmd.Body)
	case typeUpdateWallets:
		return s.cmdUpdateWallets(ctx, cmd.Body)
	case typeUpdateWatchWallets:
		return s.cmdUpdateWatchWallets(ctx, cmd.Body)
	case typeUpdatePositionStrategy:
		return s.cmdUpdatePositionStrategy(ctx, cmd.Body)
	case typeClosePosition, typeRequestExitSignal:
		return s.cmdSelector(ctx, cmd.Name, cmd.Body)
	case typePing:
		return s.cmdPing(ctx, cmd.Body)
	}
	return nil, connector.Refuse(connector.CodeUnknownCommand, "unknown command %q", cmd.Name)
}

// mutator computes and validates the next desired configure from the
// current one and the limits, and returns the frame to send.
type mutator func(cur *Configure, lim Limits) (*Configure, any, *connector.CommandError)

// decodeConfigure reads a configure command (limits are checked by its mutator).
func decodeConfigure(body []byte) (*Configure, error) {
	var b configureBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return nil, err
	}
	wallets := b.WalletPubkeys
	if b.WalletPubkey != nil {
		if wallets != nil {
			return nil, connector.Refuse(connector.CodeInvalidJSON, "give wallet_pubkeys or its legacy alias wallet_pubkey, not both")
		}
		var cerr *connector.CommandError
		if wallets, cerr = decodeWalletAlias(b.WalletPubkey); cerr != nil {
			return nil, cerr
		}
	}
	if b.Strategy == nil {
		return nil, connector.Refuse(CodeInvalidStrategy, "strategy is required")
	}
	return &Configure{
		WalletPubkeys: wallets, Strategy: *b.Strategy, SendMode: b.SendMode, TipLamports: b.TipLamports,
		DeadlineTimeoutSec: b.DeadlineTimeoutSec, WatchWallets: b.WatchWallets, MirrorConfig: b.MirrorConfig,
	}, nil
}

func configureMutator(next *Configure) mutator {
	return func(_ *Configure, lim Limits) (*Configure, any, *connector.CommandError) {
		if err := validateConfigure(next, lim); err != nil {
			return nil, nil, err
		}
		return next, configureFrame{Type: typeConfigure, Configure: *next}, nil
	}
}

func decodeUpdateStrategy(body []byte) (updateStrategyBody, error) {
	var b updateStrategyBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return b, err
	}
	if b.Strategy == nil {
		return b, connector.Refuse(CodeInvalidStrategy, "strategy is required")
	}
	return b, nil
}

func updateStrategyMutator(b updateStrategyBody) mutator {
	return func(cur *Configure, _ Limits) (*Configure, any, *connector.CommandError) {
		if cur == nil {
			return nil, nil, notConfigured()
		}
		next := *cur
		next.Strategy = *b.Strategy
		if b.DeadlineTimeoutSec != nil {
			next.DeadlineTimeoutSec = *b.DeadlineTimeoutSec
		}
		if err := validateStrategy(&next.Strategy, next.DeadlineTimeoutSec); err != nil {
			return nil, nil, err
		}
		return &next, updateStrategyFrame{Type: typeUpdateStrategy, Strategy: next.Strategy, DeadlineTimeoutSec: b.DeadlineTimeoutSec}, nil
	}
}

func decodeUpdateWallets(body []byte) ([]string, error) {
	var b updateWalletsBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return nil, err
	}
	return b.WalletPubkeys, nil
}

func updateWalletsMutator(wallets []string) mutator {
	return func(cur *Configure, lim Limits) (*Configure, any, *connector.CommandError) {
		if err := validateWallets(wallets, lim); err != nil {
			return nil, nil, err
		}
		if cur == nil {
			return nil, nil, notConfigured()
		}
		next := *cur
		next.WalletPubkeys = wallets
		return &next, updateWalletsFrame{Type: typeUpdateWallets, WalletPubkeys: next.WalletPubkeys}, nil
	}
}

func decodeUpdateWatchWallets(body []byte) ([]WatchWallet, error) {
	var b updateWatchWalletsBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return nil, err
	}
	if b.WatchWallets == nil {
		return nil, connector.Refuse(CodeInvalidWatchWallets, "watch_wallets is required (an empty list clears it)")
	}
	return *b.WatchWallets, nil
}

func updateWatchWalletsMutator(list []WatchWallet) mutator {
	return func(cur *Configure, lim Limits) (*Configure, any, *connector.CommandError) {
		if err := validateWatchWallets(list, lim); err != nil {
			return nil, nil, err
		}
		if cur == nil {
			return nil, nil, notConfigured()
		}
		next := *cur
		next.WatchWallets = list
		if list == nil {
			list = []WatchWallet{}
		}
		return &next, updateWatchWalletsFrame{Type: typeUpdateWatchWallets, WatchWallets: list}, nil
	}
}

// planFrame validates one command against a desired configure and limits
// and returns the frame it would send, without sending or storing anything.
// The handlers are built from the same decode, mutator and plan functions;
// the fuzz target runs it without network.
func planFrame(name string, body []byte, cur *Configure, lim Limits) ([]byte, error) {
	var m mutator
	switch name {
	case typeConfigure:
		next, err := decodeConfigure(body)
		if err != nil {
			return nil, err
		}
		m = configureMutator(next)
	case typeUpdateStrategy:
		b, err := decodeUpdateStrategy(body)
		if err != nil {
			return nil, err
		}
		m = updateStrategyMutator(b)
	case typeUpdateWallets:
		w, err := decodeUpdateWallets(body)
		if err != nil {
			return nil, err
		}
		m = updateWalletsMutator(w)
	case typeUpdateWatchWallets:
		list, err := decodeUpdateWatchWallets(body)
		if err != nil {
			return nil, err
		}
		m = updateWatchWalletsMutator(list)
	case typeUpdatePositionStrategy:
		id, strat, data, err := planPositionStrategy(body)
		if err != nil {
			return nil, err
		}
		if cerr := checkPositionStrategy(cur, &strat, true, id); cerr != nil {
			return nil, cerr
		}
		return data, nil
	case typeClosePosition, typeRequestExitSignal:
		_, data, err := planSelector(name, body)
		return data, err
	case typePing:
		data, _, err := planPing(body)
		return data, err
	default:
		return nil, connector.Refuse(connector.CodeUnknownCommand, "unknown command %q", name)
	}
	_, frame, cerr := m(cur, lim)
	if cerr != nil {
		return nil, cerr
	}
	data, err := json.Marshal(frame)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", name, err)
	}
	return data, nil
}

func (s *Source) cmdConfigure(ctx context.Context, body []byte) (any, error) {
	next, err := decodeConfigure(body)
	if err != nil {
		return nil, err
	}
	return s.applyState(ctx, typeConfigure, configureMutator(next))
}

func (s *Source) cmdUpdateStrategy(ctx context.Context, body []byte) (any, error) {
	b, err := decodeUpdateStrategy(body)
	if err != nil {
		return nil, err
	}
	return s.applyState(ctx, typeUpdateStrategy, updateStrategyMutator(b))
}

func (s *Source) cmdUpdateWallets(ctx context.Context, body []byte) (any, error) {
	wallets, err := decodeUpdateWallets(body)
	if err != nil {
		return nil, err
	}
	return s.applyState(ctx, typeUpdateWallets, updateWalletsMutator(wallets))
}

func (s *Source) cmdUpdateWatchWallets(ctx context.Context, body []byte) (any, error) {
	list, err := decodeUpdateWatchWallets(body)
	if err != nil {
		return nil, err
	}
	return s.applyState(ctx, typeUpdateWatchWallets, updateWatchWalletsMutator(list))
}

func notConfigured() *connector.CommandError {
	return connector.Refuse(CodeNotConfigured, "no configure yet: send configure first")
}

// applyState runs one state-changing command: compute and validate the next
// desired configure, store it in KV, then send the frame if a connection is
// open. Commands are serialized, and sending happens under the same lock
// that attaches a new connection, so the upstream always sees the configure
// of a connection before the updates that follow it.
func (s *Source) applyState(ctx context.Context, command string, mutate mutator) (any, error) {
	s.cmdMu.Lock()
	s.mu.Lock()
	cur, lim := s.desired, s.limits
	s.mu.Unlock()
	next, frame, cerr := mutate(cur, lim)
	if cerr != nil {
		s.cmdMu.Unlock()
		return nil, cerr
	}
	data, err := json.Marshal(frame)
	if err != nil {
		s.cmdMu.Unlock()
		return nil, fmt.Errorf("encode %s: %w", command, err)
	}
	if err := s.storeDesired(ctx, next, "command:"+command); err != nil {
		s.cmdMu.Unlock()
		return nil, err
	}
	s.mu.Lock()
	dropped := s.dropWalletsLocked(s.desired, next)
	s.desired = next
	c := s.conn
	var done chan error
	if c != nil {
		done = make(chan error, 1)
		if !c.enqueueLocked(outFrame{data: data, done: done, configure: command == typeConfigure}) {
			// The stored state must reach the server: a reconnect re-sends it.
			c.fail("upstream write queue full")
			c = nil
		}
	}
	s.mu.Unlock()
	s.cmdMu.Unlock()
	if len(dropped) > 0 {
		s.log.Info().Str("command", command).Int("positions", len(dropped)).Interface("position_ids", dropped).
			Msg("positions of wallets removed from the configure are no longer tracked")
		s.wakePersist()
	}
	s.wakeDeadlines() // the deadline may have changed
	return stateResult(ctx, c, done, data, next), nil
}

// stateResult waits for the frame to be written, if it was queued.
func stateResult(ctx context.Context, c *conn, done chan error, data []byte, stored any) stateReply {
	if c == nil {
		return stateReply{Pending: "reconnect", Stored: stored}
	}
	select {
	case err := <-done:
		if err != nil {
			return stateReply{Pending: "reconnect", Reason: err.Error(), Stored: stored}
		}
		return stateReply{Applied: true, Sent: data, Stored: stored}
	case <-ctx.Done():
		return stateReply{Pending: "write", Reason: "the frame is queued but was not written in time", Stored: stored}
	}
}

// planPositionStrategy decodes update_position_strategy and encodes its frame.
func planPositionStrategy(body []byte) (uint64, Strategy, []byte, error) {
	var b updatePositionStrategyBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return 0, Strategy{}, nil, err
	}
	if b.PositionID == nil {
		return 0, Strategy{}, nil, connector.Refuse(CodeInvalidPosition, "position_id is required")
	}
	if b.Strategy == nil {
		return 0, Strategy{}, nil, connector.Refuse(CodeInvalidStrategy, "strategy is required")
	}
	id, strat := *b.PositionID, *b.Strategy
	data, err := json.Marshal(updatePositionStrategyFrame{Type: typeUpdatePositionStrategy, PositionID: id, Strategy: strat})
	if err != nil {
		return 0, Strategy{}, nil, fmt.Errorf("encode update_position_strategy: %w", err)
	}
	return id, strat, data, nil
}

// checkPositionStrategy validates a position override against the desired
// configure; open tells whether the position is open.
func checkPositionStrategy(cur *Configure, strat *Strategy, open bool, id uint64) *connector.CommandError {
	if cur == nil {
		return notConfigured()
	}
	if err := validateStrategy(strat, cur.DeadlineTimeoutSec); err != nil {
		return err
	}
	if !open {
		return connector.Refuse(CodeUnknownPosition, "position %d is not open", id)
	}
	return nil
}

func (s *Source) cmdUpdatePositionStrategy(ctx context.Context, body []byte) (any, error) {
	id, strat, data, err := planPositionStrategy(body)
	if err != nil {
		return nil, err
	}

	s.cmdMu.Lock()
	s.mu.Lock()
	cur, p := s.desired, s.positions[id]
	if refusal := checkPositionStrategy(cur, &strat, p != nil, id); refusal != nil {
		s.mu.Unlock()
		s.cmdMu.Unlock()
		return nil, refusal
	}
	// Positions are replaced, never mutated: readers may hold the old one.
	updated := *p
	updated.Strategy = &strat
	s.positions[id] = &updated
	reply := updated
	c := s.conn
	var done chan error
	if c != nil {
		done = make(chan error, 1)
		if c.enqueueLocked(outFrame{data: data, done: done}) {
			c.overrides[id] = true
		} else {
			c.fail("upstream write queue full")
			c = nil
		}
	}
	s.mu.Unlock()
	s.cmdMu.Unlock()
	s.persistPosition(id)
	return stateResult(ctx, c, done, data, &reply), nil
}

// planSelector validates close_position and request_exit_signal and encodes
// the frame.
func planSelector(name string, body []byte) (selectorFrame, []byte, error) {
	var b selectorBody
	if err := connector.DecodeStrict(body, &b); err != nil {
		return selectorFrame{}, nil, err
	}
	if (b.PositionID == nil) == (b.TokenAccount == nil) {
		return selectorFrame{}, nil, connector.Refuse(CodeInvalidPositionSelector, "give exactly one of position_id or token_account")
	}
	if b.TokenAccount != nil && !validKey(*b.TokenAccount) {
		return selectorFrame{}, nil, connector.Refuse(CodeInvalidPositionSelector, "token_account must be a non-empty account key")
	}
	frame := selectorFrame{Type: name, PositionID: b.PositionID, TokenAccount: b.TokenAccount}
	if b.SlippageBps != nil {
		if name != typeRequestExitSignal {
			return selectorFrame{}, nil, connector.Refuse(connector.CodeInvalidJSON, "%s takes no slippage_bps", name)
		}
		v := *b.SlippageBps
		if v != math.Trunc(v) || v < 0 || v > math.MaxUint16 {
			return selectorFrame{}, nil, connector.Refuse(CodeInvalidSlippage, "slippage_bps must be an integer from 0 to 65535")
		}
		bps := uint16(v)
		frame.SlippageBps = &bps
	}
	data, err := json.Marshal(frame)
	if err != nil {
		return selectorFrame{}, nil, fmt.Errorf("encode %s: %w", name, err)
	}
	return frame, data, nil
}

// cmdSelector runs close_position and request_exit_signal. Only positions
// the connector tracks as open (LASERSELL_POSITIONS, kept from
// position_opened and position_closed) are forwarded: the upstream answers
// an unknown one with an error frame that no reply can carry, so the caller
// would be told "ok" for nothing. A position the server announced a moment
// ago but whose position_opened is still being read is refused too; the
// caller retries. (The deadline timer sends its own request_exit_signal,
// not through here.)
func (s *Source) cmdSelector(ctx context.Context, name string, body []byte) (any, error) {
	frame, data, err := planSelector(name, body)
	if err != nil {
		return nil, err
	}
	open := func() error { return s.openPositionLocked(frame) }
	if err := s.sendOnce(ctx, data, nil, open); err != nil {
		return nil, err
	}
	return sentReply{Sent: data}, nil
}

// openPositionLocked refuses a selector that matches no open position.
// s.mu is held.
func (s *Source) openPositionLocked(sel selectorFrame) error {
	if sel.PositionID != nil {
		if s.positions[*sel.PositionID] != nil {
			return nil
		}
		return connector.Refuse(CodeUnknownPosition, "position %d is not open: the connector tracks %s of this session",
			*sel.PositionID, openPositions(len(s.positions)))
	}
	if sel.TokenAccount != nil {
		for _, p := range s.positions {
			if p.TokenAccount == *sel.TokenAccount {
				return nil
			}
		}
		return connector.Refuse(CodeUnknownPosition, "no open position has token_account %q: the connector tracks %s of this session",
			*sel.TokenAccount, openPositions(len(s.positions)))
	}
	return nil
}

func openPositions(n int) string {
	if n == 1 {
		return "1 open position"
	}
	return strconv.Itoa(n) + " open positions"
}

// planPing validates a ping and encodes its frame; custom tells whether the
// caller chose client_time_ms (otherwise the frame is stamped when sent).
func planPing(body []byte) (data []byte, custom bool, err error) {
	var b struct {
		ClientTimeMS *uint64 `json:"client_time_ms"` // uint64 in the protocol
	}
	if err := connector.DecodeStrict(body, &b); err != nil {
		return nil, false, err
	}
	if b.ClientTimeMS == nil {
		return nil, false, nil
	}
	if *b.ClientTimeMS > math.MaxInt64 {
		return nil, false, connector.Refuse(connector.CodeInvalidJSON, "client_time_ms must be at most %d", int64(math.MaxInt64))
	}
	data, err = json.Marshal(pingFrame{Type: typePing, ClientTimeMS: int64(*b.ClientTimeMS)})
	return data, true, err
}

func (s *Source) cmdPing(ctx context.Context, body []byte) (any, error) {
	data, custom, err := planPing(body)
	if err != nil {
		return nil, err
	}
	reply := make(chan time.Duration, 1)
	f := pingOut(reply)
	if custom {
		f.data = data
	}
	if err := s.sendOnce(ctx, f.data, f.ping, nil); err != nil {
		return nil, err
	}
	t := time.NewTimer(s.cfg.PingTimeout)
	defer t.Stop()
	select {
	case rtt := <-reply:
		ms := float64(rtt.Microseconds()) / 1000
		return sentReply{Sent: f.data, RTTMS: &ms}, nil
	case <-t.C:
		return nil, connector.Refuse(connector.CodeTimeout, "ping sent, but no pong within %s", s.cfg.PingTimeout)
	case <-ctx.Done():
		return nil, connector.Refuse(connector.CodeTimeout, "ping sent, but no pong before the command deadline")
	}
}

// sendOnce writes a one-shot command on the live session (hello_ok received)
// and waits until it is written. check, when set, runs under s.mu once the
// session is known to be live; its error refuses the command.
func (s *Source) sendOnce(ctx context.Context, data []byte, ping *pingWait, check func() error) error {
	done := make(chan error, 1)
	s.mu.Lock()
	c := s.conn
	if c == nil || !c.ready {
		s.mu.Unlock()
		return connector.Refuse(CodeNotConnected, "no live upstream session (reconnecting); retry later")
	}
	if check != nil {
		if err := check(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	if !c.enqueueLocked(outFrame{data: data, done: done, ping: ping}) {
		s.mu.Unlock()
		return connector.Refuse(CodeBusy, "the upstream write queue is full; retry later")
	}
	s.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			return connector.Refuse(CodeNotConnected, "the upstream connection ended before the command was written")
		}
		return nil
	case <-ctx.Done():
		return connector.Refuse(connector.CodeTimeout, "the command was queued but not written in time")
	}
}
