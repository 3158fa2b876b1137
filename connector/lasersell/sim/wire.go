package sim

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"sort"
	"strconv"
)

// WebSocket opcodes (RFC 6455). Server frames are never masked.
const (
	opText   byte = 1
	opBinary byte = 2
	opClose  byte = 8
	opPing   byte = 9
	opPong   byte = 10
)

// Well-known Solana program ids used in generated messages.
const (
	tokenProgramID = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
	tokenDecimals  = 6
	tokenUnit      = 1_000_000 // atomic units per whole token (decimals 6)
	tokenSupply    = 1_000_000_000
)

// appendFrame appends one complete, unfragmented server frame.
func appendFrame(buf []byte, op byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		buf = append(buf, 0x80|op, byte(n))
	case n <= 0xffff:
		buf = append(buf, 0x80|op, 126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0x80|op, 127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	return append(buf, payload...)
}

// beginTextFrame reserves a 4-byte text frame header at the end of buf; the caller
// appends a payload (< 64 KiB) and calls endTextFrame with the returned start.
func beginTextFrame(buf []byte) ([]byte, int) {
	start := len(buf)
	return append(buf, 0x80|opText, 126, 0, 0), start
}

// endTextFrame fixes the header reserved by beginTextFrame, so payloads are written in
// place with no intermediate allocation.
func endTextFrame(buf []byte, start int) []byte {
	n := len(buf) - start - 4
	if n < 126 {
		buf[start+1] = byte(n)
		copy(buf[start+2:], buf[start+4:])
		return buf[:len(buf)-2]
	}
	buf[start+2], buf[start+3] = byte(n>>8), byte(n)
	return buf
}

func closePayload(code int, reason string) []byte {
	if code == 0 || code == 1005 {
		return nil
	}
	p := []byte{byte(code >> 8), byte(code)}
	return append(p, reason...)
}

// --- server messages -------------------------------------------------------------------

type msgHello struct {
	Type         string          `json:"type"`
	SessionID    uint64          `json:"session_id"`
	ServerTimeMs int64           `json:"server_time_ms"`
	Limits       json.RawMessage `json:"limits"`
}

type msgPong struct {
	Type         string `json:"type"`
	ServerTimeMs int64  `json:"server_time_ms"`
}

type msgError struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

type msgBalance struct {
	Type         string `json:"type"`
	WalletPubkey string `json:"wallet_pubkey"`
	Mint         string `json:"mint"`
	TokenAccount string `json:"token_account"`
	TokenProgram string `json:"token_program"`
	Tokens       uint64 `json:"tokens"`
	Slot         uint64 `json:"slot"`
}

type pumpSwapCtx struct {
	Pool string `json:"pool"`
}

type marketContext struct {
	MarketType string       `json:"market_type"`
	PumpFun    *struct{}    `json:"pumpfun,omitempty"`
	PumpSwap   *pumpSwapCtx `json:"pumpswap,omitempty"`
}

type msgPositionOpened struct {
	Type               string         `json:"type"`
	PositionID         uint64         `json:"position_id"`
	WalletPubkey       string         `json:"wallet_pubkey"`
	Mint               string         `json:"mint"`
	TokenAccount       string         `json:"token_account"`
	TokenProgram       string         `json:"token_program"`
	Tokens             uint64         `json:"tokens"`
	EntryQuoteUnits    uint64         `json:"entry_quote_units"`
	MarketContext      *marketContext `json:"market_context,omitempty"`
	Slot               uint64         `json:"slot"`
	TokenName          string         `json:"token_name"`
	TokenSymbol        string         `json:"token_symbol"`
	TokenDecimals      uint8          `json:"token_decimals"`
	TokenPriceQuote    uint64         `json:"token_price_quote"`
	MarketCapQuote     uint64         `json:"market_cap_quote"`
	PoolLiquidityQuote uint64         `json:"pool_liquidity_quote"`
	OpenedAtMs         int64          `json:"opened_at_ms"`
}

type msgPositionClosed struct {
	Type         string `json:"type"`
	PositionID   uint64 `json:"position_id"`
	WalletPubkey string `json:"wallet_pubkey"`
	Mint         string `json:"mint"`
	TokenAccount string `json:"token_account"`
	Reason       string `json:"reason"`
	Slot         uint64 `json:"slot"`
}

type msgExit struct {
	Type           string         `json:"type"`
	SessionID      uint64         `json:"session_id"`
	PositionID     uint64         `json:"position_id"`
	WalletPubkey   string         `json:"wallet_pubkey"`
	Mint           string         `json:"mint"`
	TokenAccount   string         `json:"token_account"`
	TokenProgram   string         `json:"token_program"`
	PositionTokens uint64         `json:"position_tokens"`
	ProfitUnits    int64          `json:"profit_units"`
	Reason         string         `json:"reason"`
	TriggeredAtMs  int64          `json:"triggered_at_ms"`
	MarketContext  *marketContext `json:"market_context,omitempty"`
	UnsignedTxB64  string         `json:"unsigned_tx_b64"`
	SellTokens     *uint64        `json:"sell_tokens,omitempty"`
	LevelIndex     *uint32        `json:"level_index,omitempty"`
}

type slippageBand struct {
	SlippageBps uint16  `json:"slippage_bps"`
	MaxTokens   uint64  `json:"max_tokens"`
	CoveragePct float64 `json:"coverage_pct"`
}

type msgLiquidity struct {
	Type           string         `json:"type"`
	PositionID     uint64         `json:"position_id"`
	Bands          []slippageBand `json:"bands"`
	LiquidityTrend string         `json:"liquidity_trend"`
	ServerTimeMs   int64          `json:"server_time_ms"`
}

type msgTradeTick struct {
	Type        string `json:"type"`
	PositionID  uint64 `json:"position_id"`
	TimeMs      int64  `json:"time_ms"`
	Side        string `json:"side"`
	TokenAmount uint64 `json:"token_amount"`
	QuoteAmount uint64 `json:"quote_amount"`
	PriceQuote  uint64 `json:"price_quote"`
	Maker       string `json:"maker"`
	TxSignature string `json:"tx_signature"`
}

type msgUnknown struct {
	Type          string  `json:"type"`
	Regime        string  `json:"regime"`
	VolatilityBps uint64  `json:"volatility_bps"`
	ConfidencePct float64 `json:"confidence_pct"`
	ServerTimeMs  int64   `json:"server_time_ms"`
}

// mustJSON marshals values built only from the types above; failure is a programming error.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("sim: encoding server message: " + err.Error())
	}
	return b
}

func encodeError(code, message string) []byte {
	return mustJSON(msgError{Type: "error", Code: code, Message: message})
}

// encodeLimits renders the limits object, honouring LegacyLimits and ExtraLimits.
func encodeLimits(cfg *Config) json.RawMessage {
	l := cfg.Limits
	type legacy struct {
		HiCapacity             uint64 `json:"hi_capacity"`
		PnLFlushMs             uint64 `json:"pnl_flush_ms"`
		MaxPositionsPerSession uint64 `json:"max_positions_per_session"`
		MaxWalletsPerSession   uint64 `json:"max_wallets_per_session"`
		MaxPositionsPerWallet  uint64 `json:"max_positions_per_wallet"`
		MaxSessionsPerAPIKey   uint64 `json:"max_sessions_per_api_key"`
	}
	var b []byte
	if cfg.LegacyLimits {
		b = mustJSON(legacy{l.HiCapacity, l.PnLFlushMs, l.MaxPositionsPerSession, l.MaxWalletsPerSession,
			l.MaxPositionsPerWallet, l.MaxSessionsPerAPIKey})
	} else {
		b = mustJSON(l)
	}
	if len(cfg.ExtraLimits) > 0 {
		keys := make([]string, 0, len(cfg.ExtraLimits))
		for k := range cfg.ExtraLimits {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b = b[:len(b)-1]
		for _, k := range keys {
			b = append(b, ',')
			b = append(b, mustJSON(k)...)
			b = append(b, ':')
			b = strconv.AppendUint(b, cfg.ExtraLimits[k], 10)
		}
		b = append(b, '}')
	}
	return b
}

// appendPnL writes one pnl_update payload (~190 bytes) without allocating.
func appendPnL(b []byte, id uint64, profit int64, proceeds uint64, nowMs int64, price, mcap uint64) []byte {
	b = append(b, `{"type":"pnl_update","position_id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"profit_units":`...)
	b = strconv.AppendInt(b, profit, 10)
	b = append(b, `,"proceeds_units":`...)
	b = strconv.AppendUint(b, proceeds, 10)
	b = append(b, `,"server_time_ms":`...)
	b = strconv.AppendInt(b, nowMs, 10)
	b = append(b, `,"token_price_quote":`...)
	b = strconv.AppendUint(b, price, 10)
	b = append(b, `,"market_cap_quote":`...)
	b = strconv.AppendUint(b, mcap, 10)
	return append(b, '}')
}

// --- generated identifiers -------------------------------------------------------------

const b58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// base58 encodes b with the Bitcoin/Solana alphabet.
func base58(b []byte) string {
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	digits := make([]byte, 0, len(b)*138/100+1)
	for _, v := range b[zeros:] {
		carry := int(v)
		for i := range digits {
			carry += int(digits[i]) << 8
			digits[i] = byte(carry % 58)
			carry /= 58
		}
		for carry > 0 {
			digits = append(digits, byte(carry%58))
			carry /= 58
		}
	}
	out := make([]byte, 0, zeros+len(digits))
	for range zeros {
		out = append(out, '1')
	}
	for i := len(digits) - 1; i >= 0; i-- {
		out = append(out, b58Alphabet[digits[i]])
	}
	return string(out)
}

// fakeKey derives a stable 32-byte base58 public key from parts.
func fakeKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return base58(h.Sum(nil))
}

// fakeSignature derives a stable 64-byte base58 transaction signature.
func fakeSignature(parts ...string) string {
	a := sha256.Sum256([]byte(fakeKey(parts...)))
	b := sha256.Sum256(a[:])
	return base58(append(a[:], b[:]...))
}

// fakeUnsignedTx returns base64 of a plausible unsigned v0 transaction: one empty
// signature slot, a versioned message header, then deterministic bytes.
func fakeUnsignedTx(size int, parts ...string) string {
	buf := make([]byte, 0, size+32)
	buf = append(buf, 1)
	buf = append(buf, make([]byte, 64)...)
	buf = append(buf, 0x80, 1, 0, 9)
	h := sha256.Sum256([]byte(fakeKey(parts...)))
	for len(buf) < size {
		buf = append(buf, h[:]...)
		h = sha256.Sum256(h[:])
	}
	return base64.StdEncoding.EncodeToString(buf[:size])
}

// mulDiv returns a*b/c without overflow for the magnitudes used here.
func mulDiv(a, b, c uint64) uint64 {
	return a/c*b + a%c*b/c
}
