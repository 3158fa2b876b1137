package lasersell

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// sessionsFromEnv reads the LASERSELL_* variables as main does and returns
// the sessions' configurations.
func sessionsFromEnv(t *testing.T) ([]Config, error) {
	t.Helper()
	var c Config
	if err := envconfig.Process(EnvPrefix, &c); err != nil {
		t.Fatal(err)
	}
	if !c.Configured() {
		t.Fatal("LASERSELL_SESSION_NAMES alone does not make LaserSell configured")
	}
	sessions, err := c.Sessions()
	if err != nil {
		return nil, err
	}
	cfgs, err := c.sessionConfigs()
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range sessions {
		if s.Name != cfgs[i].Session {
			t.Fatalf("session %d is named %q, its configuration %q", i, s.Name, cfgs[i].Session)
		}
	}
	return cfgs, nil
}

// Several sessions: each takes its own LASERSELL_<NAME>_* variables and the
// shared LASERSELL_* ones for the rest; the API key comes from a file per
// session.
func TestSeveralSessionsFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	betaKey := filepath.Join(dir, "beta.key")
	if err := os.WriteFile(betaKey, []byte("beta-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LASERSELL_SESSION_NAMES", "alpha, beta-2")
	t.Setenv("LASERSELL_ALPHA_API_KEY", "alpha-key")
	t.Setenv("LASERSELL_BETA_2_API_KEY_FILE", betaKey)
	t.Setenv("LASERSELL_WALLETS", walletA)
	t.Setenv("LASERSELL_BETA_2_WALLETS", walletB+","+walletC)
	t.Setenv("LASERSELL_TARGET_PROFIT_PCT", "5")
	t.Setenv("LASERSELL_ALPHA_BACKOFF_MAX", "1s")
	t.Setenv("LASERSELL_URL", "ws://127.0.0.1:1/v1/ws")
	t.Setenv("LASERSELL_BETA_2_URL", "ws://127.0.0.1:2/v1/ws")

	cfgs, err := sessionsFromEnv(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 2 {
		t.Fatalf("%d sessions, want 2", len(cfgs))
	}
	alpha, beta := cfgs[0], cfgs[1]
	if alpha.Session != "alpha" || beta.Session != "beta-2" {
		t.Fatalf("names %q, %q", alpha.Session, beta.Session)
	}
	if k, _ := alpha.apiKey(); k != "alpha-key" {
		t.Errorf("alpha's key is not its own")
	}
	if k, _ := beta.apiKey(); k != "beta-key" {
		t.Errorf("beta-2's key is not read from its file")
	}
	if !slices.Equal(alpha.Wallets, []string{walletA}) || !slices.Equal(beta.Wallets, []string{walletB, walletC}) {
		t.Errorf("wallets: alpha %v (want the shared one), beta-2 %v (want its own)", alpha.Wallets, beta.Wallets)
	}
	if alpha.TargetProfitPct != 5 || beta.TargetProfitPct != 5 {
		t.Errorf("the shared strategy is not shared: %v, %v", alpha.TargetProfitPct, beta.TargetProfitPct)
	}
	if alpha.BackoffMax != time.Second || beta.BackoffMax != DefaultConfig().BackoffMax {
		t.Errorf("backoff max: alpha %v (its own 1s), beta-2 %v (the default)", alpha.BackoffMax, beta.BackoffMax)
	}
	if alpha.URL != "ws://127.0.0.1:1/v1/ws" || beta.URL != "ws://127.0.0.1:2/v1/ws" {
		t.Errorf("urls: %s, %s", alpha.URL, beta.URL)
	}
}

// Bad declarations are refused, each naming the session and the variable.
func TestSeveralSessionsRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"a session without a key", map[string]string{
			"LASERSELL_SESSION_NAMES": "alpha,beta", "LASERSELL_ALPHA_API_KEY": "sekrit-key-value", "LASERSELL_WALLETS": walletA, "LASERSELL_STOP_LOSS_PCT": "3",
		}, []string{"session beta (LASERSELL_BETA_<VARIABLE>, else LASERSELL_<VARIABLE>)", "LASERSELL_API_KEY or LASERSELL_API_KEY_FILE is required"}},
		{"both forms", map[string]string{
			"LASERSELL_SESSION_NAMES": "alpha", "LASERSELL_SESSION": "main", "LASERSELL_API_KEY": "sekrit-key-value",
		}, []string{"LASERSELL_SESSION and LASERSELL_SESSION_NAMES are both set"}},
		{"two names, one variable prefix", map[string]string{
			"LASERSELL_SESSION_NAMES": "a-b,a_b", "LASERSELL_API_KEY": "sekrit-key-value",
		}, []string{`"a-b" and "a_b" both read LASERSELL_A_B_* variables`}},
		{"a bad name", map[string]string{
			"LASERSELL_SESSION_NAMES": "ok,not.ok", "LASERSELL_API_KEY": "sekrit-key-value",
		}, []string{`LASERSELL_SESSION_NAMES: "not.ok" must be`}},
		{"a bad value of one session", map[string]string{
			"LASERSELL_SESSION_NAMES": "alpha", "LASERSELL_API_KEY": "sekrit-key-value", "LASERSELL_ALPHA_BACKOFF_MAX": "soon",
		}, []string{"session alpha", "LASERSELL_ALPHA_BACKOFF_MAX"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := sessionsFromEnv(t)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "sekrit") {
				t.Errorf("the error quotes a key: %v", err)
			}
		})
	}
}

// Two sessions with their own keys and wallets run side by side in one
// runtime, each against its own upstream (which refuses any other key).
func TestSeveralSessionsRunSideBySide(t *testing.T) {
	simA, simB := sim.New(sim.Config{APIKey: "key-a"}, zerolog.Nop()), sim.New(sim.Config{APIKey: "key-b"}, zerolog.Nop())
	for _, s := range []*sim.Server{simA, simB} {
		if _, err := s.Start("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
	}
	t.Setenv("LASERSELL_SESSION_NAMES", "alpha,beta")
	t.Setenv("LASERSELL_ALPHA_API_KEY", "key-a")
	t.Setenv("LASERSELL_ALPHA_URL", simA.URL())
	t.Setenv("LASERSELL_BETA_API_KEY", "key-b")
	t.Setenv("LASERSELL_BETA_URL", simB.URL())
	t.Setenv("LASERSELL_BETA_WALLETS", walletB)
	t.Setenv("LASERSELL_WALLETS", walletA)
	t.Setenv("LASERSELL_STOP_LOSS_PCT", "10")
	var c Config
	if err := envconfig.Process(EnvPrefix, &c); err != nil {
		t.Fatal(err)
	}
	sessions, err := c.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	env := connectortest.Start(t, connectortest.Options{})
	env.Run(sessions...)
	for _, tc := range []struct {
		srv    *sim.Server
		wallet string
	}{{simA, walletA}, {simB, walletB}} {
		connectortest.Eventually(t, wait, "a configure at "+tc.srv.URL(), func() bool {
			return strings.Contains(string(tc.srv.LastConfigure()), tc.wallet)
		})
		if n := tc.srv.ActiveSessions(); n != 1 {
			t.Errorf("%s: %d sessions", tc.srv.URL(), n)
		}
	}
	for _, name := range []string{"alpha", "beta"} {
		if rep := env.Request("lasersell."+name+".cmd.ping", `{}`, wait); !rep.OK {
			t.Errorf("ping %s: %+v", name, rep.Error)
		}
	}
}
