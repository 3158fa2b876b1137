package lasersell

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/kelseyhightower/envconfig"
)

// Several sessions in one process (and so in a fleet): LASERSELL_SESSION_NAMES
// lists them, and each reads every LASERSELL_<VARIABLE> as
// LASERSELL_<NAME>_<VARIABLE> first (NAME upper-cased, '-' as '_'), falling
// back to the shared LASERSELL_<VARIABLE>. A trader with two keys writes:
//
//	LASERSELL_SESSION_NAMES=alpha,beta
//	LASERSELL_ALPHA_API_KEY_FILE=/run/secrets/alpha   LASERSELL_ALPHA_WALLETS=...
//	LASERSELL_BETA_API_KEY_FILE=/run/secrets/beta     LASERSELL_BETA_WALLETS=...
//	LASERSELL_TARGET_PROFIT_PCT=5                     (shared by both)

// sessionConfigs returns the configuration of each session of
// c.SessionNames: c (the shared variables) overridden by the session's own.
func (c Config) sessionConfigs() ([]Config, error) {
	var errs []error
	seen := map[string]string{} // env token -> session name
	var out []Config
	for _, name := range c.SessionNames {
		name = strings.TrimSpace(name)
		if !validSession(name) {
			errs = append(errs, fmt.Errorf("LASERSELL_SESSION_NAMES: %q must be 1-64 letters, digits, '-' or '_' (it is a subject token and a KV key)", name))
			continue
		}
		token := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		if other, dup := seen[token]; dup {
			errs = append(errs, fmt.Errorf("LASERSELL_SESSION_NAMES: %q and %q both read LASERSELL_%s_* variables", other, name, token))
			continue
		}
		seen[token] = name
		sc, err := c.overriddenBy(EnvPrefix + "_" + token)
		if err == nil {
			sc.Session, sc.SessionNames = name, nil
			err = sc.Validate()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("session %s (LASERSELL_%s_<VARIABLE>, else LASERSELL_<VARIABLE>): %w", name, token, err))
			continue
		}
		out = append(out, sc)
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("LASERSELL_SESSION_NAMES lists no session"))
	}
	return out, errors.Join(errs...)
}

// overriddenBy returns c with every field whose variable is set under prefix
// (LASERSELL_ALPHA_WALLETS for Wallets) taken from there.
func (c Config) overriddenBy(prefix string) (Config, error) {
	var own Config
	if err := envconfig.Process(prefix, &own); err != nil {
		return c, err
	}
	// envconfig names each field's variable; the template reads them.
	var keys strings.Builder
	if err := envconfig.Usagef(prefix, &own, &keys, "{{range .}}{{.Name}}\t{{usage_key .}}\n{{end}}"); err != nil {
		return c, err
	}
	out, from := reflect.ValueOf(&c).Elem(), reflect.ValueOf(&own).Elem()
	for _, line := range strings.Split(strings.TrimSpace(keys.String()), "\n") {
		field, key, ok := strings.Cut(line, "\t")
		if !ok || field == "Session" || field == "SessionNames" {
			continue
		}
		if _, set := os.LookupEnv(key); set {
			out.FieldByName(field).Set(from.FieldByName(field))
		}
	}
	return c, nil
}
