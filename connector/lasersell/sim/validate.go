package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Error codes sent in "error" frames. The real server's code strings are not public;
// these are the simulator's, stable so tests can match them.
const (
	CodeInvalidMessage   = "invalid_message"    // not a JSON object, binary frame
	CodeMissingType      = "missing_type"       // no string "type"
	CodeUnknownType      = "unknown_type"       // unsupported client message type
	CodeNotConfigured    = "not_configured"     // command before a valid configure
	CodePositionNotFound = "position_not_found" // unknown or not visible position
	CodeSessionLimit     = "session_limit"      // too many sessions for the API key
	// Field validation failures use "invalid_" + the canonical command type, for example
	// "invalid_configure", "invalid_update_wallets", "invalid_request_exit_signal".
)

type fields map[string]json.RawMessage

// present reports whether key is set to something other than null.
func (f fields) present(key string) bool {
	v, ok := f[key]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

func (f fields) optString(key string) (string, bool, error) {
	if !f.present(key) {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(f[key], &s); err != nil {
		return "", false, fmt.Errorf("%s must be a string", key)
	}
	return s, true, nil
}

func (f fields) optBool(key string) error {
	if !f.present(key) {
		return nil
	}
	var b bool
	if err := json.Unmarshal(f[key], &b); err != nil {
		return fmt.Errorf("%s must be a boolean", key)
	}
	return nil
}

func (f fields) optUint(key string, max uint64) (uint64, bool, error) {
	if !f.present(key) {
		return 0, false, nil
	}
	v, err := parseUint(f[key], max)
	if err != nil {
		return 0, false, fmt.Errorf("%s %w", key, err)
	}
	return v, true, nil
}

func (f fields) optObject(key string) (fields, error) {
	if !f.present(key) {
		return nil, nil
	}
	var o fields
	if err := json.Unmarshal(f[key], &o); err != nil || o == nil {
		return nil, fmt.Errorf("%s must be an object", key)
	}
	return o, nil
}

func parseUint(raw json.RawMessage, max uint64) (uint64, error) {
	s := string(bytes.TrimSpace(raw))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > max {
		return 0, fmt.Errorf("must be an integer between 0 and %d", max)
	}
	return v, nil
}

// parseNumber accepts any JSON number; out-of-range literals (1e999) are reported as
// not finite, which is how NaN/Infinity from a careless client would reach the server.
func parseNumber(raw json.RawMessage) (float64, error) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || !(s[0] == '-' || s[0] >= '0' && s[0] <= '9') {
		if strings.Contains(s, "NaN") || strings.Contains(s, "Infinity") {
			return 0, errors.New("must be a finite number")
		}
		return 0, errors.New("must be a number")
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, errors.New("must be a finite number")
	}
	return v, nil
}

func (f fields) pct(key, prefix string) (float64, error) {
	if !f.present(key) {
		return 0, nil
	}
	v, err := parseNumber(f[key])
	if err != nil {
		return 0, fmt.Errorf("%s%s %w", prefix, key, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("%s%s must be >= 0", prefix, key)
	}
	return v, nil
}

// validateStrategy applies the SDKs' rules: every percentage finite and >= 0, and at
// least one of target profit, stop loss, trailing stop or the deadline greater than zero.
func validateStrategy(raw json.RawMessage, deadlineSec uint64) error {
	if raw == nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return errors.New("strategy is required")
	}
	var st fields
	if err := json.Unmarshal(raw, &st); err != nil || st == nil {
		return errors.New("strategy must be an object")
	}
	var sum float64
	for _, k := range []string{"target_profit_pct", "stop_loss_pct", "trailing_stop_pct"} {
		v, err := st.pct(k, "strategy.")
		if err != nil {
			return err
		}
		sum += v
	}
	if _, err := st.pct("breakeven_trail_pct", "strategy."); err != nil {
		return err
	}
	for _, k := range []string{"sell_on_graduation", "liquidity_guard"} {
		if err := st.optBool(k); err != nil {
			return fmt.Errorf("strategy.%w", err)
		}
	}
	if st.present("take_profit_levels") {
		var levels []fields
		if err := json.Unmarshal(st["take_profit_levels"], &levels); err != nil {
			return errors.New("strategy.take_profit_levels must be an array of objects")
		}
		for i, lv := range levels {
			if lv == nil {
				return fmt.Errorf("strategy.take_profit_levels[%d] must be an object", i)
			}
			prefix := fmt.Sprintf("strategy.take_profit_levels[%d].", i)
			for k := range lv {
				if _, err := lv.pct(k, prefix); err != nil {
					return err
				}
			}
			if sell, _ := lv.pct("sell_pct", prefix); sell > 100 {
				return fmt.Errorf("%ssell_pct must be <= 100", prefix)
			}
		}
	}
	if sum == 0 && deadlineSec == 0 {
		return errors.New("at least one of strategy.target_profit_pct, strategy.stop_loss_pct, strategy.trailing_stop_pct, or deadline_timeout_sec must be > 0")
	}
	return nil
}

// parseWallets reads wallet_pubkeys (or the legacy wallet_pubkey), as a string or a list.
func parseWallets(f fields, max uint64) ([]string, error) {
	key := "wallet_pubkeys"
	if !f.present(key) {
		key = "wallet_pubkey"
	}
	if !f.present(key) {
		return nil, errors.New("wallet_pubkeys is required")
	}
	var list []string
	var one string
	if err := json.Unmarshal(f[key], &one); err == nil {
		list = []string{one}
	} else if err := json.Unmarshal(f[key], &list); err != nil {
		return nil, fmt.Errorf("%s must be a string or a list of strings", key)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s must not be empty", key)
	}
	seen := make(map[string]struct{}, len(list))
	out := make([]string, 0, len(list))
	for i, w := range list {
		if w == "" || strings.ContainsAny(w, " \t\r\n") {
			return nil, fmt.Errorf("%s[%d] is not a valid public key", key, i)
		}
		if _, dup := seen[w]; dup {
			continue
		}
		seen[w] = struct{}{}
		out = append(out, w)
	}
	if uint64(len(out)) > max {
		return nil, fmt.Errorf("%d wallets exceed max_wallets_per_session %d", len(out), max)
	}
	return out, nil
}

// validateWatchWallets checks a watch_wallets list; null or absent means empty.
func validateWatchWallets(raw json.RawMessage, required bool, max uint64) (int, error) {
	if raw == nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if required {
			return 0, errors.New("watch_wallets is required")
		}
		return 0, nil
	}
	var list []fields
	if err := json.Unmarshal(raw, &list); err != nil {
		return 0, errors.New("watch_wallets must be an array of objects")
	}
	for i, e := range list {
		if e == nil {
			return 0, fmt.Errorf("watch_wallets[%d] must be an object", i)
		}
		pk, ok, err := e.optString("pubkey")
		if err != nil || !ok || pk == "" {
			return 0, fmt.Errorf("watch_wallets[%d].pubkey must be a non-empty string", i)
		}
		if err := e.optBool("mirror_sell"); err != nil {
			return 0, fmt.Errorf("watch_wallets[%d].%w", i, err)
		}
		ab, err := e.optObject("auto_buy")
		if err != nil {
			return 0, fmt.Errorf("watch_wallets[%d].%w", i, err)
		}
		if ab != nil {
			if w, ok, err := ab.optString("wallet_pubkey"); err != nil || !ok || w == "" {
				return 0, fmt.Errorf("watch_wallets[%d].auto_buy.wallet_pubkey must be a non-empty string", i)
			}
			if _, ok, err := ab.optUint("amount_quote_units", math.MaxUint64); err != nil || !ok {
				return 0, fmt.Errorf("watch_wallets[%d].auto_buy.amount_quote_units must be an unsigned integer", i)
			}
			if _, _, err := ab.optUint("amount_usd1_units", math.MaxUint64); err != nil {
				return 0, fmt.Errorf("watch_wallets[%d].auto_buy.%w", i, err)
			}
		}
	}
	if uint64(len(list)) > max {
		return 0, fmt.Errorf("%d watch wallets exceed max_watch_wallets_per_session %d", len(list), max)
	}
	return len(list), nil
}

// selector is the "exactly one of position_id / token_account" of close/exit commands.
type selector struct {
	id      uint64
	account string
	byID    bool
}

func parseSelector(f fields) (selector, error) {
	id, hasID, err := f.optUint("position_id", math.MaxUint64)
	if err != nil {
		return selector{}, err
	}
	acct, hasAcct, err := f.optString("token_account")
	if err != nil {
		return selector{}, err
	}
	if hasID == hasAcct {
		return selector{}, errors.New("exactly one of position_id or token_account is required")
	}
	if hasAcct && acct == "" {
		return selector{}, errors.New("token_account must not be empty")
	}
	return selector{id: id, account: acct, byID: hasID}, nil
}

func (s selector) String() string {
	if s.byID {
		return "position_id " + strconv.FormatUint(s.id, 10)
	}
	return "token_account " + s.account
}
