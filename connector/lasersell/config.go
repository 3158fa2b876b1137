package lasersell

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
)

// EnvPrefix is the prefix of every LaserSell variable: read the configuration
// with envconfig.Process(EnvPrefix, &cfg) (or ConfigFromEnv). The fields use
// split_words rather than envconfig name tags, because a name tag would also
// make envconfig fall back to the bare name (URL, SESSION, WALLETS...) when
// the prefixed variable is unset.
const EnvPrefix = "LASERSELL"

// DefaultURL is the production endpoint of the Exit Intelligence Stream.
const DefaultURL = "wss://stream.lasersell.io/v1/ws"

// Config is the LaserSell source's configuration, read from the environment.
//
// Desired-state precedence: the initial configure built from LASERSELL_WALLETS
// and the strategy variables only seeds the desired-state KV entry when that
// entry does not exist yet. Once it exists (seeded, or replaced by a configure
// or update_* command), the KV entry wins over the environment at every start,
// because it is the operator's latest intent; the connector logs a warning when
// the environment disagrees with it. To make the environment win again, delete
// the key lasersell.<session>.configure of bucket CONNECTOR_DESIRED, or send a
// configure command.
type Config struct {
	APIKey     Secret `split_words:"true" desc:"API key sent as the x-api-key header (or use LASERSELL_API_KEY_FILE)"`
	APIKeyFile string `split_words:"true" desc:"file holding the API key (Docker/Kubernetes secrets); a trailing newline is ignored"`
	URL        string `split_words:"true" default:"wss://stream.lasersell.io/v1/ws" desc:"WebSocket endpoint of the Exit Intelligence Stream (ws:// or wss://)"`
	// CAFile adds a private CA to the system roots (see tls.go).
	CAFile  string `split_words:"true" desc:"PEM file of CA certificates trusted for wss:// in addition to the system roots (a private CA, or a TLS-inspecting proxy's)"`
	Session string `split_words:"true" default:"default" desc:"session name, the second subject token: letters, digits, '-' and '_'"`
	// SessionNames declares several sessions (see sessions.go).
	SessionNames []string `split_words:"true" desc:"several sessions, comma-separated names; each reads LASERSELL_<NAME>_<VARIABLE> (e.g. LASERSELL_ALPHA_API_KEY_FILE), else LASERSELL_<VARIABLE>; replaces LASERSELL_SESSION"`

	// The initial configure (see the precedence rule above).
	Wallets            []string `split_words:"true" desc:"initial configure: wallet public keys, comma-separated"`
	TargetProfitPct    float64  `split_words:"true" desc:"initial configure: strategy.target_profit_pct (0 disables)"`
	StopLossPct        float64  `split_words:"true" desc:"initial configure: strategy.stop_loss_pct (0 disables)"`
	TrailingStopPct    float64  `split_words:"true" desc:"initial configure: strategy.trailing_stop_pct (0 disables)"`
	SendMode           string   `split_words:"true" desc:"initial configure: send_mode, for example helius_sender, rpc or astralane (empty: server default)"`
	TipLamports        uint64   `split_words:"true" desc:"initial configure: tip_lamports (0: not sent)"`
	DeadlineTimeoutSec uint64   `split_words:"true" desc:"initial configure: request an exit signal for positions open this long, in seconds (0 disables)"`

	HighLane int `split_words:"true" default:"1024" desc:"high-lane capacity (exits, positions, balances, errors); when full the upstream reader waits"`
	LowLane  int `split_words:"true" default:"65536" desc:"low-lane capacity (pnl_update), about 500 ms of the connector's maximum on a quiet machine; when full the oldest update is dropped"`

	PingInterval time.Duration `split_words:"true" default:"30s" desc:"interval of the application-level ping (RTT measurement, keep-alive)"`
	ReadTimeout  time.Duration `split_words:"true" default:"60s" desc:"a connection that receives nothing (not even a pong) for this long is dead (detected within 9/8 of it)"`
	WriteTimeout time.Duration `split_words:"true" default:"10s" desc:"bound on writing one frame upstream"`
	DialTimeout  time.Duration `split_words:"true" default:"10s" desc:"bound on the TCP, TLS and WebSocket handshake, and on the wait for hello_ok after the configure is sent"`
	BackoffBase  time.Duration `split_words:"true" default:"100ms" desc:"first reconnect delay; doubles per failed attempt"`
	BackoffMax   time.Duration `split_words:"true" default:"2s" desc:"largest reconnect delay (after an authentication refusal, HTTP 401/403, or a TLS certificate failure: 15 times this)"`
	HealthyAfter time.Duration `split_words:"true" default:"5s" desc:"an established session (hello_ok received, configure written) resets the reconnect backoff once the server sends it anything but an error, or once it lived this long; sessions that end before that (hello_ok then an immediate close) keep doubling it"`
	PingTimeout  time.Duration `split_words:"true" default:"5s" desc:"how long the ping command waits for the pong"`
	// ReconcileAfter is the settle window of position reconciliation: see Source.reconcile.
	ReconcileAfter time.Duration `split_words:"true" default:"5s" desc:"settle window after each (re)connect (hello_ok and configure): positions of configured wallets the server has not re-announced by then (and one ping round trip later) are removed from LASERSELL_POSITIONS"`
}

// ConfigFromEnv reads the LASERSELL_* variables and validates them.
func ConfigFromEnv() (Config, error) {
	var c Config
	if err := envconfig.Process(EnvPrefix, &c); err != nil {
		return c, fmt.Errorf("lasersell configuration: %w", err)
	}
	return c, c.Validate()
}

// DefaultConfig returns the defaults of every field, from the struct tags,
// as envconfig sets them from an empty environment (no API key, no initial
// configure).
func DefaultConfig() Config {
	var c Config
	if err := connector.Defaults(&c); err != nil {
		panic(err) // the tags are constants: a bad one fails every test at once
	}
	return c
}

// Secret is a string that never prints: fmt, JSON and text encodings show
// "[redacted]", so a logged Config cannot leak the API key.
type Secret string

const redacted = "[redacted]"

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the key.
func (s Secret) GoString() string { return s.String() }

// MarshalText keeps JSON, zerolog and similar encoders from printing the key.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Configured reports whether an API key is given, the sign that LaserSell is meant to run.
func (c Config) Configured() bool {
	return c.APIKey != "" || c.APIKeyFile != "" || len(c.SessionNames) > 0
}

// LaneSizes returns the lane capacities of the session.
func (c Config) LaneSizes() connector.LaneSizes {
	return connector.LaneSizes{High: c.HighLane, Low: c.LowLane}
}

// Validate reports every configuration problem, each naming its variable. It
// reads LASERSELL_API_KEY_FILE to check it holds a key.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch {
	case c.APIKey != "" && c.APIKeyFile != "":
		bad("LASERSELL_API_KEY and LASERSELL_API_KEY_FILE are both set: set only one")
	case c.APIKey == "" && c.APIKeyFile == "":
		bad("LASERSELL_API_KEY or LASERSELL_API_KEY_FILE is required")
	case c.APIKey != "":
		if err := checkKey(string(c.APIKey)); err != nil {
			bad("LASERSELL_API_KEY: %v", err)
		}
	default:
		if _, err := readKeyFile(c.APIKeyFile); err != nil {
			bad("LASERSELL_API_KEY_FILE: %v", err)
		}
	}

	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		bad("LASERSELL_URL=%q must be a ws:// or wss:// URL with a host", redactURL(c.URL))
	}
	if c.CAFile != "" {
		if u, err := url.Parse(c.URL); err == nil && u.Scheme == "ws" {
			// A CA file says the operator expects TLS: a ws:// URL would
			// send the API key in clear text without a word.
			bad("LASERSELL_CA_FILE is set but LASERSELL_URL=%q is ws:// (no TLS): use wss:// or unset LASERSELL_CA_FILE", redactURL(c.URL))
		}
		if _, err := readCAFile(c.CAFile); err != nil {
			bad("LASERSELL_CA_FILE: %v", err)
		}
	}
	if !validSession(c.Session) {
		bad("LASERSELL_SESSION=%q must be 1-64 letters, digits, '-' or '_' (it is a subject token and a KV key)", c.Session)
	}

	initial, err := c.initialConfigure()
	if err != nil {
		errs = append(errs, err)
	} else if initial == nil && c.hasInitialSettings() {
		bad("LASERSELL_WALLETS is required when a strategy, send mode, tip or deadline variable is set")
	}

	if c.HighLane < 0 {
		bad("LASERSELL_HIGH_LANE=%d must be >= 0 (0: default %d)", c.HighLane, connector.DefaultHighLane)
	}
	if c.LowLane < 0 {
		bad("LASERSELL_LOW_LANE=%d must be >= 0 (0: default %d)", c.LowLane, connector.DefaultLowLane)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"LASERSELL_PING_INTERVAL", c.PingInterval}, {"LASERSELL_READ_TIMEOUT", c.ReadTimeout},
		{"LASERSELL_WRITE_TIMEOUT", c.WriteTimeout}, {"LASERSELL_DIAL_TIMEOUT", c.DialTimeout},
		{"LASERSELL_BACKOFF_BASE", c.BackoffBase}, {"LASERSELL_BACKOFF_MAX", c.BackoffMax},
		{"LASERSELL_HEALTHY_AFTER", c.HealthyAfter}, {"LASERSELL_PING_TIMEOUT", c.PingTimeout},
		{"LASERSELL_RECONCILE_AFTER", c.ReconcileAfter},
	} {
		if d.v <= 0 {
			bad("%s=%s must be positive", d.name, d.v)
		}
	}
	if c.BackoffBase > 0 && c.BackoffMax > 0 && c.BackoffBase > c.BackoffMax {
		bad("LASERSELL_BACKOFF_BASE=%s must not exceed LASERSELL_BACKOFF_MAX=%s", c.BackoffBase, c.BackoffMax)
	}
	// A quiet but healthy server answers only our pings: the read timeout must
	// leave room for one ping and its pong, or idle sessions would be cut.
	if c.PingInterval > 0 && c.ReadTimeout > 0 && c.ReadTimeout <= c.PingInterval {
		bad("LASERSELL_READ_TIMEOUT=%s must be greater than LASERSELL_PING_INTERVAL=%s", c.ReadTimeout, c.PingInterval)
	}
	return errors.Join(errs...)
}

func (c Config) hasInitialSettings() bool {
	return c.TargetProfitPct != 0 || c.StopLossPct != 0 || c.TrailingStopPct != 0 ||
		c.SendMode != "" || c.TipLamports != 0 || c.DeadlineTimeoutSec != 0
}

// initialConfigure builds the configure seeded from the environment, or nil
// when LASERSELL_WALLETS is empty. Errors name the variable.
func (c Config) initialConfigure() (*Configure, error) {
	wallets := make([]string, 0, len(c.Wallets))
	for _, w := range c.Wallets {
		if w = strings.TrimSpace(w); w != "" {
			wallets = append(wallets, w)
		}
	}
	if len(wallets) == 0 {
		return nil, nil
	}
	cfg := &Configure{
		WalletPubkeys: wallets,
		Strategy: Strategy{
			TargetProfitPct: c.TargetProfitPct,
			StopLossPct:     c.StopLossPct,
			TrailingStopPct: c.TrailingStopPct,
		},
		DeadlineTimeoutSec: c.DeadlineTimeoutSec,
	}
	if c.SendMode != "" {
		cfg.SendMode = &c.SendMode
	}
	if c.TipLamports != 0 {
		tip := c.TipLamports
		cfg.TipLamports = &tip
	}
	var errs []error
	if err := validateWallets(cfg.WalletPubkeys, Limits{}); err != nil {
		errs = append(errs, fmt.Errorf("LASERSELL_WALLETS: %s", err.Message))
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"LASERSELL_TARGET_PROFIT_PCT", c.TargetProfitPct},
		{"LASERSELL_STOP_LOSS_PCT", c.StopLossPct},
		{"LASERSELL_TRAILING_STOP_PCT", c.TrailingStopPct},
	} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			errs = append(errs, fmt.Errorf("%s=%v must be a finite number >= 0", f.name, f.v))
		}
	}
	if len(errs) == 0 {
		if err := validateStrategy(&cfg.Strategy, cfg.DeadlineTimeoutSec); err != nil {
			errs = append(errs, errors.New("LASERSELL_TARGET_PROFIT_PCT, LASERSELL_STOP_LOSS_PCT, LASERSELL_TRAILING_STOP_PCT and LASERSELL_DEADLINE_TIMEOUT_SEC are all zero: set at least one"))
		}
	}
	if c.SendMode != "" && !validSendMode(c.SendMode) {
		errs = append(errs, fmt.Errorf("LASERSELL_SEND_MODE=%q must be letters, digits, '-' or '_'", c.SendMode))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// apiKey returns the key from the variable or the file.
func (c Config) apiKey() (string, error) {
	if c.APIKey != "" {
		return string(c.APIKey), nil
	}
	key, err := readKeyFile(c.APIKeyFile)
	if err != nil {
		return "", fmt.Errorf("LASERSELL_API_KEY_FILE: %w", err)
	}
	return key, nil
}

// readKeyFile reads a secret file, ignoring the trailing newline editors and
// `kubectl create secret --from-file` leave behind. The error never quotes the
// file's content.
func readKeyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %q: %w", path, errors.Unwrap(err))
	}
	key := strings.TrimRight(string(b), "\r\n")
	if err := checkKey(key); err != nil {
		return "", fmt.Errorf("%q: %w", path, err)
	}
	return key, nil
}

// checkKey refuses keys that could not travel in an HTTP header.
func checkKey(key string) error {
	if strings.TrimSpace(key) == "" {
		return errors.New("the key is empty")
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return errors.New("the key contains control characters")
		}
	}
	return nil
}

func validSession(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func validSendMode(s string) bool { return validSession(s) }

// redactURL drops user info from a URL before it is printed.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
