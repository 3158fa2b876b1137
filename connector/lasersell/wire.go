package lasersell

import (
	"encoding/json"
	"math"
	"strings"
	"unicode"

	"github.com/jetbridge/connector/connector"
)

// Client message types (the upstream "type" discriminator).
const (
	typeConfigure              = "configure"
	typePing                   = "ping"
	typeUpdateStrategy         = "update_strategy"
	typeUpdateWallets          = "update_wallets"
	typeUpdateWatchWallets     = "update_watch_wallets"
	typeUpdatePositionStrategy = "update_position_strategy"
	typeClosePosition          = "close_position"
	typeRequestExitSignal      = "request_exit_signal"
)

// Server message types the source acts on; every type is published.
const (
	typeHelloOK        = "hello_ok"
	typePong           = "pong"
	typePnLUpdate      = "pnl_update"
	typeExitSignal     = "exit_signal_with_tx"
	typePositionOpened = "position_opened"
	typePositionClosed = "position_closed"
	typeBalanceUpdate  = "balance_update"
)

// Strategy is the upstream strategy object. Field names follow the canonical
// protocol crate (lasersell-stream-proto); unknown fields are refused rather
// than silently dropped, because the connector re-encodes what it sends.
type Strategy struct {
	TargetProfitPct   float64           `json:"target_profit_pct"`
	StopLossPct       float64           `json:"stop_loss_pct"`
	TrailingStopPct   float64           `json:"trailing_stop_pct"`
	SellOnGraduation  *bool             `json:"sell_on_graduation,omitempty"`
	TakeProfitLevels  []TakeProfitLevel `json:"take_profit_levels,omitempty"`
	LiquidityGuard    *bool             `json:"liquidity_guard,omitempty"`
	BreakevenTrailPct *float64          `json:"breakeven_trail_pct,omitempty"`
}

// TakeProfitLevel is one level of a take-profit ladder.
type TakeProfitLevel struct {
	ProfitPct       float64 `json:"profit_pct"`
	SellPct         float64 `json:"sell_pct"`
	TrailingStopPct float64 `json:"trailing_stop_pct"`
}

// WatchWallet is one external wallet watched for copy trading.
type WatchWallet struct {
	Pubkey     string   `json:"pubkey"`
	AutoBuy    *AutoBuy `json:"auto_buy,omitempty"`
	MirrorSell *bool    `json:"mirror_sell,omitempty"`
}

// AutoBuy configures mirror buys for a watched wallet.
type AutoBuy struct {
	WalletPubkey     string  `json:"wallet_pubkey"`
	AmountQuoteUnits uint64  `json:"amount_quote_units"`
	AmountUSD1Units  *uint64 `json:"amount_usd1_units,omitempty"`
}

// MirrorConfig hardens copy trading.
type MirrorConfig struct {
	MaxPositionsPerWallet *uint32  `json:"max_positions_per_wallet,omitempty"`
	CooldownSec           *uint64  `json:"cooldown_sec,omitempty"`
	SkipCreatorTokens     *bool    `json:"skip_creator_tokens,omitempty"`
	MaxActiveSOL          *float64 `json:"max_active_sol,omitempty"`
	BuySlippageBps        *uint16  `json:"buy_slippage_bps,omitempty"`
	MinLiquiditySOL       *float64 `json:"min_liquidity_sol,omitempty"`
	MaxEntryDriftPct      *float64 `json:"max_entry_drift_pct,omitempty"`
	MaxConsecutiveLosses  *uint32  `json:"max_consecutive_losses,omitempty"`
}

// Configure is the desired upstream configuration: the body of the configure
// command, the value kept in KV and, with "type", the frame sent upstream
// after every (re)connect. deadline_timeout_sec is enforced by the connector
// (the SDKs' StreamSession does it client-side); it is also sent, as the
// protocol table lists it, and servers that do not know it ignore it.
type Configure struct {
	WalletPubkeys      []string      `json:"wallet_pubkeys"`
	Strategy           Strategy      `json:"strategy"`
	SendMode           *string       `json:"send_mode,omitempty"`
	TipLamports        *uint64       `json:"tip_lamports,omitempty"`
	DeadlineTimeoutSec uint64        `json:"deadline_timeout_sec,omitempty"`
	WatchWallets       []WatchWallet `json:"watch_wallets,omitempty"`
	MirrorConfig       *MirrorConfig `json:"mirror_config,omitempty"`
}

// configureBody is the configure command as received: wallet_pubkey is the
// legacy alias of wallet_pubkeys, a string or a list.
type configureBody struct {
	WalletPubkeys      []string        `json:"wallet_pubkeys"`
	WalletPubkey       json.RawMessage `json:"wallet_pubkey"`
	Strategy           *Strategy       `json:"strategy"`
	SendMode           *string         `json:"send_mode"`
	TipLamports        *uint64         `json:"tip_lamports"`
	DeadlineTimeoutSec uint64          `json:"deadline_timeout_sec"`
	WatchWallets       []WatchWallet   `json:"watch_wallets"`
	MirrorConfig       *MirrorConfig   `json:"mirror_config"`
}

type updateStrategyBody struct {
	Strategy *Strategy `json:"strategy"`
	// DeadlineTimeoutSec, when present, changes the connector-side deadline
	// (like the SDKs' UpdateStrategy(strategy, deadline)).
	DeadlineTimeoutSec *uint64 `json:"deadline_timeout_sec"`
}

type updateWalletsBody struct {
	WalletPubkeys []string `json:"wallet_pubkeys"`
}

type updateWatchWalletsBody struct {
	WatchWallets *[]WatchWallet `json:"watch_wallets"`
}

type updatePositionStrategyBody struct {
	PositionID *uint64   `json:"position_id"`
	Strategy   *Strategy `json:"strategy"`
}

// selectorBody is close_position and request_exit_signal. slippage_bps is read
// as a float so that an out-of-range value is refused with its own code
// rather than as a JSON type error.
type selectorBody struct {
	PositionID   *uint64  `json:"position_id"`
	TokenAccount *string  `json:"token_account"`
	SlippageBps  *float64 `json:"slippage_bps"`
}

// Outgoing frames. Each embeds the type first so the wire reads naturally.

type configureFrame struct {
	Type string `json:"type"`
	Configure
}

type updateStrategyFrame struct {
	Type     string   `json:"type"`
	Strategy Strategy `json:"strategy"`
	// DeadlineTimeoutSec is forwarded when the command changes it, so that a
	// server validating "all zero" against the deadline sees the new one.
	DeadlineTimeoutSec *uint64 `json:"deadline_timeout_sec,omitempty"`
}

type updateWalletsFrame struct {
	Type          string   `json:"type"`
	WalletPubkeys []string `json:"wallet_pubkeys"`
}

type updateWatchWalletsFrame struct {
	Type         string        `json:"type"`
	WatchWallets []WatchWallet `json:"watch_wallets"`
}

type updatePositionStrategyFrame struct {
	Type       string   `json:"type"`
	PositionID uint64   `json:"position_id"`
	Strategy   Strategy `json:"strategy"`
}

type selectorFrame struct {
	Type         string  `json:"type"`
	PositionID   *uint64 `json:"position_id,omitempty"`
	TokenAccount *string `json:"token_account,omitempty"`
	SlippageBps  *uint16 `json:"slippage_bps,omitempty"`
}

type pingFrame struct {
	Type         string `json:"type"`
	ClientTimeMS int64  `json:"client_time_ms"`
}

// Limits are the hello_ok limits the connector validates against. Zero means
// not advertised. Unknown limit fields are kept only in the raw copy.
type Limits struct {
	HiCapacity                uint64 `json:"hi_capacity"`
	PnLFlushMS                uint64 `json:"pnl_flush_ms"`
	MaxPositionsPerSession    uint64 `json:"max_positions_per_session"`
	MaxWalletsPerSession      uint64 `json:"max_wallets_per_session"`
	MaxPositionsPerWallet     uint64 `json:"max_positions_per_wallet"`
	MaxSessionsPerAPIKey      uint64 `json:"max_sessions_per_api_key"`
	MaxWatchWalletsPerSession uint64 `json:"max_watch_wallets_per_session"`
}

// Refusal codes of the LaserSell commands, in addition to the core's
// invalid_json, timeout and internal_error:
//
//	code                       command(s)                          meaning
//	invalid_json               all                                 body is not one JSON object, has unknown fields or wrong types
//	invalid_strategy           configure, update_strategy,         a percentage is negative (or not finite), a ladder level is out of
//	                           update_position_strategy            range, or target, stop, trailing and deadline are all zero
//	invalid_wallets            configure, update_wallets           no wallet, an empty or blank key, or a duplicate
//	too_many_wallets           configure, update_wallets           more wallets than hello_ok limits.max_wallets_per_session
//	invalid_watch_wallets      configure, update_watch_wallets     an entry without pubkey, a duplicate, or an auto_buy without wallet
//	too_many_watch_wallets     configure, update_watch_wallets     more than limits.max_watch_wallets_per_session (when advertised)
//	invalid_send_mode          configure                           send_mode is empty or not a plain identifier
//	invalid_position_selector  close_position, request_exit_signal not exactly one of position_id and token_account (or an empty one)
//	invalid_position           update_position_strategy            position_id is missing
//	invalid_slippage           request_exit_signal                 slippage_bps is not an integer 0..65535
//	not_configured             update_strategy, update_wallets,    no configure exists yet to update
//	                           update_watch_wallets, update_position_strategy
//	unknown_position           update_position_strategy,           the position is not open (not in the positions bucket)
//	                           close_position, request_exit_signal
//	not_connected              close_position, request_exit_signal, ping   no live upstream session (after hello_ok)
//	busy                       all                                 the upstream write queue is full
const (
	CodeInvalidStrategy         = "invalid_strategy"
	CodeInvalidWallets          = "invalid_wallets"
	CodeTooManyWallets          = "too_many_wallets"
	CodeInvalidWatchWallets     = "invalid_watch_wallets"
	CodeTooManyWatchWallets     = "too_many_watch_wallets"
	CodeInvalidSendMode         = "invalid_send_mode"
	CodeInvalidPositionSelector = "invalid_position_selector"
	CodeInvalidPosition         = "invalid_position"
	CodeInvalidSlippage         = "invalid_slippage"
	CodeNotConfigured           = "not_configured"
	CodeUnknownPosition         = "unknown_position"
	CodeNotConnected            = "not_connected"
	CodeBusy                    = "busy"
)

// validateStrategy applies the SDKs' rules before anything is sent.
func validateStrategy(s *Strategy, deadlineSec uint64) *connector.CommandError {
	if s == nil {
		return connector.Refuse(CodeInvalidStrategy, "strategy is required")
	}
	check := func(name string, v float64) *connector.CommandError {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return connector.Refuse(CodeInvalidStrategy, "strategy.%s must be a finite number >= 0", name)
		}
		return nil
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"target_profit_pct", s.TargetProfitPct},
		{"stop_loss_pct", s.StopLossPct},
		{"trailing_stop_pct", s.TrailingStopPct},
	} {
		if err := check(f.name, f.v); err != nil {
			return err
		}
	}
	if s.BreakevenTrailPct != nil {
		if err := check("breakeven_trail_pct", *s.BreakevenTrailPct); err != nil {
			return err
		}
	}
	for i, l := range s.TakeProfitLevels {
		for _, f := range []struct {
			name string
			v    float64
		}{{"profit_pct", l.ProfitPct}, {"sell_pct", l.SellPct}, {"trailing_stop_pct", l.TrailingStopPct}} {
			if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
				return connector.Refuse(CodeInvalidStrategy, "strategy.take_profit_levels[%d].%s must be a finite number >= 0", i, f.name)
			}
		}
		if l.SellPct > 100 {
			return connector.Refuse(CodeInvalidStrategy, "strategy.take_profit_levels[%d].sell_pct must be <= 100", i)
		}
	}
	if s.TargetProfitPct == 0 && s.StopLossPct == 0 && s.TrailingStopPct == 0 && deadlineSec == 0 {
		return connector.Refuse(CodeInvalidStrategy,
			"at least one of strategy.target_profit_pct, strategy.stop_loss_pct, strategy.trailing_stop_pct or deadline_timeout_sec must be > 0")
	}
	return nil
}

// validateWallets checks a wallet list against the protocol and the limits.
func validateWallets(wallets []string, lim Limits) *connector.CommandError {
	if len(wallets) == 0 {
		return connector.Refuse(CodeInvalidWallets, "wallet_pubkeys must list at least one wallet")
	}
	seen := make(map[string]struct{}, len(wallets))
	for i, w := range wallets {
		if !validKey(w) {
			return connector.Refuse(CodeInvalidWallets, "wallet_pubkeys[%d] is not a public key (empty, blank, control characters or longer than 128 bytes)", i)
		}
		if _, dup := seen[w]; dup {
			return connector.Refuse(CodeInvalidWallets, "wallet_pubkeys[%d] %q is listed twice", i, w)
		}
		seen[w] = struct{}{}
	}
	if lim.MaxWalletsPerSession > 0 && uint64(len(wallets)) > lim.MaxWalletsPerSession {
		return connector.Refuse(CodeTooManyWallets, "%d wallets exceed the session limit max_wallets_per_session=%d",
			len(wallets), lim.MaxWalletsPerSession)
	}
	return nil
}

func validateWatchWallets(list []WatchWallet, lim Limits) *connector.CommandError {
	seen := make(map[string]struct{}, len(list))
	for i, w := range list {
		if !validKey(w.Pubkey) {
			return connector.Refuse(CodeInvalidWatchWallets, "watch_wallets[%d].pubkey is not a public key", i)
		}
		if _, dup := seen[w.Pubkey]; dup {
			return connector.Refuse(CodeInvalidWatchWallets, "watch_wallets[%d].pubkey %q is listed twice", i, w.Pubkey)
		}
		seen[w.Pubkey] = struct{}{}
		if w.AutoBuy != nil && !validKey(w.AutoBuy.WalletPubkey) {
			return connector.Refuse(CodeInvalidWatchWallets, "watch_wallets[%d].auto_buy.wallet_pubkey is not a public key", i)
		}
	}
	if lim.MaxWatchWalletsPerSession > 0 && uint64(len(list)) > lim.MaxWatchWalletsPerSession {
		return connector.Refuse(CodeTooManyWatchWallets, "%d watch wallets exceed the session limit max_watch_wallets_per_session=%d",
			len(list), lim.MaxWatchWalletsPerSession)
	}
	return nil
}

func validateMirrorConfig(m *MirrorConfig) *connector.CommandError {
	if m == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{"max_active_sol", m.MaxActiveSOL}, {"min_liquidity_sol", m.MinLiquiditySOL}, {"max_entry_drift_pct", m.MaxEntryDriftPct}} {
		if f.v != nil && (math.IsNaN(*f.v) || math.IsInf(*f.v, 0) || *f.v < 0) {
			return connector.Refuse(connector.CodeInvalidJSON, "mirror_config.%s must be a finite number >= 0", f.name)
		}
	}
	return nil
}

// validateConfigure checks a whole configure against the protocol and limits.
func validateConfigure(c *Configure, lim Limits) *connector.CommandError {
	if err := validateWallets(c.WalletPubkeys, lim); err != nil {
		return err
	}
	if err := validateStrategy(&c.Strategy, c.DeadlineTimeoutSec); err != nil {
		return err
	}
	if c.SendMode != nil && !validSendMode(*c.SendMode) {
		return connector.Refuse(CodeInvalidSendMode, "send_mode must be a non-empty identifier (letters, digits, '-', '_'), for example helius_sender")
	}
	if err := validateWatchWallets(c.WatchWallets, lim); err != nil {
		return err
	}
	return validateMirrorConfig(c.MirrorConfig)
}

// validKey accepts what could be a base58 public key without assuming the
// alphabet: no blanks, no control characters, bounded length.
func validKey(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) < 0
}

// decodeWalletAlias reads the legacy wallet_pubkey (string or list).
func decodeWalletAlias(raw json.RawMessage) ([]string, *connector.CommandError) {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err == nil {
		return many, nil
	}
	return nil, connector.Refuse(connector.CodeInvalidJSON, "wallet_pubkey must be a string or a list of strings")
}
