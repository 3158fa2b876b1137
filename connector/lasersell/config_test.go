package lasersell

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
)

func TestBackoffSequence(t *testing.T) {
	b := connector.Backoff{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	want := []int64{100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for i, w := range want {
		if got := b.Next().Milliseconds(); got != w {
			t.Fatalf("attempt %d: backoff %d ms, want %d", i+1, got, w)
		}
	}
	b.Reset()
	if got := b.Next().Milliseconds(); got != 100 {
		t.Fatalf("after reset: %d ms, want 100", got)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LASERSELL_API_KEY_FILE", keyFile)
	t.Setenv("LASERSELL_SESSION", "desk-1")
	t.Setenv("LASERSELL_WALLETS", walletA+", "+walletB)
	t.Setenv("LASERSELL_STOP_LOSS_PCT", "12.5")
	t.Setenv("LASERSELL_DEADLINE_TIMEOUT_SEC", "90")
	t.Setenv("LASERSELL_SEND_MODE", "helius_sender")
	// A bare name must never be read in place of the prefixed one.
	t.Setenv("URL", "ws://must-not-leak-in")
	t.Setenv("SESSION", "wrong")
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != DefaultURL || c.Session != "desk-1" || c.PingInterval != 30*time.Second ||
		c.ReadTimeout != time.Minute || c.BackoffBase != 100*time.Millisecond || c.BackoffMax != 2*time.Second ||
		c.ReconcileAfter != 5*time.Second {
		t.Fatalf("defaults not applied: %+v", c)
	}
	key, err := c.apiKey()
	if err != nil || key != testKey {
		t.Fatalf("key from file: %q, %v (trailing newline must be trimmed)", key, err)
	}
	ic, err := c.initialConfigure()
	if err != nil || ic == nil || strings.Join(ic.WalletPubkeys, ",") != walletA+","+walletB ||
		ic.Strategy.StopLossPct != 12.5 || ic.DeadlineTimeoutSec != 90 || *ic.SendMode != "helius_sender" {
		t.Fatalf("initial configure: %+v, %v", ic, err)
	}

	// The documented variable names, exactly.
	var usage strings.Builder
	if err := envconfig.Usagef(EnvPrefix, &Config{}, &usage, "{{range .}}{{usage_key .}} {{end}}"); err != nil {
		t.Fatal(err)
	}
	want := "LASERSELL_API_KEY LASERSELL_API_KEY_FILE LASERSELL_URL LASERSELL_CA_FILE LASERSELL_SESSION LASERSELL_SESSION_NAMES LASERSELL_WALLETS " +
		"LASERSELL_TARGET_PROFIT_PCT LASERSELL_STOP_LOSS_PCT LASERSELL_TRAILING_STOP_PCT LASERSELL_SEND_MODE " +
		"LASERSELL_TIP_LAMPORTS LASERSELL_DEADLINE_TIMEOUT_SEC LASERSELL_HIGH_LANE LASERSELL_LOW_LANE " +
		"LASERSELL_PING_INTERVAL LASERSELL_READ_TIMEOUT LASERSELL_WRITE_TIMEOUT LASERSELL_DIAL_TIMEOUT " +
		"LASERSELL_BACKOFF_BASE LASERSELL_BACKOFF_MAX LASERSELL_HEALTHY_AFTER LASERSELL_PING_TIMEOUT " +
		"LASERSELL_RECONCILE_AFTER "
	if usage.String() != want {
		t.Fatalf("variables:\n%s\nwant:\n%s", usage.String(), want)
	}
	if !reflect.DeepEqual(DefaultConfig(), Config{URL: DefaultURL, Session: "default", HighLane: 1024, LowLane: 65536,
		PingInterval: 30 * time.Second, ReadTimeout: time.Minute, WriteTimeout: 10 * time.Second, DialTimeout: 10 * time.Second,
		BackoffBase: 100 * time.Millisecond, BackoffMax: 2 * time.Second, HealthyAfter: 5 * time.Second, PingTimeout: 5 * time.Second,
		ReconcileAfter: 5 * time.Second}) {
		t.Fatal("DefaultConfig drifted from the envconfig defaults")
	}
}

func TestConfigValidateNamesTheVariable(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no key", func(c *Config) { c.APIKey = "" }, "LASERSELL_API_KEY or LASERSELL_API_KEY_FILE is required"},
		{"both keys", func(c *Config) { c.APIKeyFile = empty }, "set only one"},
		{"missing file", func(c *Config) { c.APIKey, c.APIKeyFile = "", "/nonexistent/key" }, "LASERSELL_API_KEY_FILE"},
		{"empty file", func(c *Config) { c.APIKey, c.APIKeyFile = "", empty }, "LASERSELL_API_KEY_FILE"},
		{"bad url", func(c *Config) { c.URL = "http://x" }, "LASERSELL_URL"},
		{"bad session", func(c *Config) { c.Session = "a.b" }, "LASERSELL_SESSION"},
		{"blank session", func(c *Config) { c.Session = "" }, "LASERSELL_SESSION"},
		{"duplicate wallet", func(c *Config) { c.Wallets = []string{walletA, walletA} }, "LASERSELL_WALLETS"},
		{"negative pct", func(c *Config) { c.StopLossPct = -1 }, "LASERSELL_STOP_LOSS_PCT"},
		{"nan pct", func(c *Config) { c.TargetProfitPct = math.NaN() }, "LASERSELL_TARGET_PROFIT_PCT"},
		{"all zero", func(c *Config) { c.TargetProfitPct, c.StopLossPct = 0, 0 }, "LASERSELL_DEADLINE_TIMEOUT_SEC"},
		{"strategy without wallets", func(c *Config) { c.Wallets = nil }, "LASERSELL_WALLETS is required"},
		{"send mode", func(c *Config) { c.SendMode = "a b" }, "LASERSELL_SEND_MODE"},
		{"lane", func(c *Config) { c.LowLane = -1 }, "LASERSELL_LOW_LANE"},
		{"ping", func(c *Config) { c.PingInterval = 0 }, "LASERSELL_PING_INTERVAL"},
		{"read vs ping", func(c *Config) { c.ReadTimeout = c.PingInterval }, "LASERSELL_READ_TIMEOUT"},
		{"backoff", func(c *Config) { c.BackoffBase = time.Hour }, "LASERSELL_BACKOFF_BASE"},
		{"reconcile", func(c *Config) { c.ReconcileAfter = 0 }, "LASERSELL_RECONCILE_AFTER"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig("ws://127.0.0.1:1/v1/ws")
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testKey) {
				t.Fatalf("the API key leaked into %v", err)
			}
		})
	}
	c := testConfig("ws://127.0.0.1:1/v1/ws")
	c.Wallets, c.TargetProfitPct, c.StopLossPct = nil, 0, 0
	if err := c.Validate(); err != nil {
		t.Fatalf("no initial configure is valid: %v", err)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	c := testConfig("ws://127.0.0.1:1/v1/ws")
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(c.APIKey), string(js)} {
		if strings.Contains(s, testKey) {
			t.Fatalf("API key printed: %s", s)
		}
		if !strings.Contains(s, "[redacted]") {
			t.Fatalf("no redaction marker in %s", s)
		}
	}
}

func TestAPIKeyFromVariable(t *testing.T) {
	t.Setenv("LASERSELL_API_KEY", testKey)
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if key, err := c.apiKey(); err != nil || key != testKey || !c.Configured() {
		t.Fatalf("key %q, %v", key, err)
	}
}
