package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// help, -h and --help print the commands and every variable with its default,
// from the same config structs `connector run` reads.
func TestHelpListsCommandsAndEveryVariable(t *testing.T) {
	vars, err := envVariables()
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"help", "-h", "--help"} {
		var out bytes.Buffer
		if err := dispatch(context.Background(), []string{arg}, &out); err != nil {
			t.Fatalf("%s: %v", arg, err)
		}
		for _, cmd := range []string{"run", "demo", "sim lasersell", "sim openstream", "config --check", "probe URL", "version"} {
			if !strings.Contains(out.String(), "  "+cmd+" ") {
				t.Errorf("%s does not list the command %q", arg, cmd)
			}
		}
		for _, v := range vars {
			if !strings.Contains(out.String(), v[0]) {
				t.Errorf("%s does not list %s", arg, v[0])
			}
		}
	}
}

// `connector config` (alias env) prints each variable as a block: its name
// and default on one line, its meaning on the indented lines below.
func TestConfigPrintsVariablesWithDefaults(t *testing.T) {
	var cfgOut, envOut bytes.Buffer
	if err := dispatch(context.Background(), []string{"config"}, &cfgOut); err != nil {
		t.Fatal(err)
	}
	if err := dispatch(context.Background(), []string{"env"}, &envOut); err != nil {
		t.Fatal(err)
	}
	if cfgOut.String() != envOut.String() {
		t.Fatal("config and env print different texts")
	}
	lines := map[string]string{} // name: name line + " | " + meaning
	last := ""
	for _, l := range strings.Split(cfgOut.String(), "\n") {
		switch {
		case strings.HasPrefix(l, "      "):
			lines[last] += " " + strings.TrimSpace(l)
		case strings.HasPrefix(l, "  "):
			last = strings.Fields(l)[0]
			lines[last] = l + " |"
		}
	}
	for name, wants := range map[string][]string{
		"CONNECTOR_HTTP_ADDR":   {"127.0.0.1:8080", "/readyz"},
		"LOG_LEVEL":             {"info", "trace, debug, info, warn or error"},
		"LOG_FORMAT":            {"auto", "json, console"},
		"LASERSELL_BACKOFF_MAX": {"2s", "largest reconnect delay"},
		"OPENSTREAM_LOW_LANE":   {"8192", "oldest dropped when full"},
		"GOGC":                  {"100", "a number (percent) or off"},
	} {
		if !strings.HasPrefix(lines[name], "  "+name+" ") || !strings.Contains(lines[name], "default "+wants[0]+" |") {
			t.Errorf("config block of %s is %q, want its first line to give the default %s", name, lines[name], wants[0])
		}
		for _, w := range wants {
			if !strings.Contains(lines[name], w) {
				t.Errorf("config block of %s is %q, want it to contain %q", name, lines[name], w)
			}
		}
	}
	vars, err := envVariables()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if _, ok := lines[v[0]]; !ok {
			t.Errorf("config prints no block for %s", v[0])
		}
	}
	if err := dispatch(context.Background(), []string{"config", "extra"}, &bytes.Buffer{}); !isConfigError(err) {
		t.Fatalf("config with an argument: %v", err)
	}
}

func isConfigError(err error) bool {
	var ce *configError
	return errors.As(err, &ce)
}

// config --check validates everything `run` would load, connects to nothing
// (NATS_URL points at a closed port and still passes), and fails with one
// line naming the variable, never echoing a secret.
func TestConfigCheck(t *testing.T) {
	valid := map[string]string{
		"NATS_URL":                     "nats://user:hunter2@127.0.0.1:1", // nothing listens: must not be dialled
		"CONNECTOR_HTTP_ADDR":          "",
		"OPENSTREAM_ROBOTS":            "arm=127.0.0.1:1",
		"OPENSTREAM_MONITORS":          "arm/joints=/project/robot/joints/joint_states@2ms",
		"LASERSELL_API_KEY":            "sk-check-secret",
		"LASERSELL_WALLETS":            "W1",
		"LASERSELL_STOP_LOSS_PCT":      "2",
		"STREAM_LASERSELL_PNL_MAX_AGE": "1h",
	}
	for k, v := range valid {
		t.Setenv(k, v)
	}
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"config", "--check"}, &out); err != nil {
		t.Fatalf("valid configuration: %v", err)
	}
	if got := out.String(); !strings.HasPrefix(got, "configuration OK: sources lasersell, openstream; NATS from NATS_URL; HTTP off") ||
		strings.Contains(got, "hunter2") || strings.Contains(got, "sk-check-secret") {
		t.Fatalf("check output %q", got)
	}

	for _, tc := range []struct{ env, value, want string }{
		{"NATS_URL", "http://user:hunter2@nats:4222", "NATS_URL"},
		{"STREAM_OPENSTREAM_DATA_STORAGE", "tape", "STREAM_OPENSTREAM_DATA"},
		{"OPENSTREAM_MONITORS", "arm/joints=/x@fast", "OPENSTREAM_MONITORS"},
		{"LASERSELL_SESSION", "a.b", "LASERSELL_SESSION"},
		{"LOG_FORMAT", "xml", "LOG_FORMAT"},
		{"CONNECTOR_HTTP_ADDR", "8080", "CONNECTOR_HTTP_ADDR"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			var out bytes.Buffer
			err := dispatch(context.Background(), []string{"config", "-check"}, &out)
			if !isConfigError(err) {
				t.Fatalf("want a configuration error (exit status 2), got %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") ||
				strings.Contains(msg, "sk-check-secret") || out.Len() != 0 {
				t.Fatalf("error %q (output %q): want one line naming %s and no secret", msg, out.String(), tc.want)
			}
		})
	}
}

// LOG_LEVEL filters, LOG_FORMAT chooses JSON or console; auto is JSON unless
// stdout is a terminal; console output to a non-terminal has no colour codes.
func TestLoggerLevelAndFormat(t *testing.T) {
	var js bytes.Buffer
	log := newLogger("warn", "json", &js)
	log.Info().Msg("hidden")
	log.Warn().Str("k", "v").Msg("shown")
	var rec map[string]any
	if err := json.Unmarshal(js.Bytes(), &rec); err != nil || rec["level"] != "warn" || rec["message"] != "shown" || rec["k"] != "v" || rec["time"] == nil {
		t.Fatalf("json log %q: %v", js.String(), err)
	}

	var auto bytes.Buffer
	autoLog := newLogger("DEBUG", "auto", &auto)
	autoLog.Debug().Msg("dbg")
	if err := json.Unmarshal(auto.Bytes(), &rec); err != nil || rec["level"] != "debug" {
		t.Fatalf("auto format to a non-terminal, level DEBUG: %q", auto.String())
	}

	var console bytes.Buffer
	consoleLog := newLogger("info", "console", &console)
	consoleLog.Info().Str("k", "v").Msg("hello")
	if got := console.String(); json.Valid(console.Bytes()) || strings.Contains(got, "\x1b[") || !strings.Contains(got, "INF") || !strings.Contains(got, "hello") || !strings.Contains(got, "k=v") {
		t.Fatalf("console log %q", got)
	}
	if newLogger("", "json", &bytes.Buffer{}).GetLevel() != zerolog.InfoLevel {
		t.Fatal("an empty LOG_LEVEL (simulators) must mean info")
	}
}

// probe's own usage errors are configuration errors (exit status 2); -h is not an error.
func TestProbeArguments(t *testing.T) {
	if err := dispatch(context.Background(), []string{"probe"}, &bytes.Buffer{}); !isConfigError(err) {
		t.Fatalf("probe without URL: %v", err)
	}
	if err := dispatch(context.Background(), []string{"probe", "-timeout", "0s", "http://x"}, &bytes.Buffer{}); !isConfigError(err) {
		t.Fatalf("probe with zero timeout: %v", err)
	}
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"probe", "-h"}, &out); err != nil || !strings.Contains(out.String(), "usage: connector probe") {
		t.Fatalf("probe -h: %v %q", err, out.String())
	}
	if err := dispatch(context.Background(), []string{"probe", "-timeout", "1s", "http://127.0.0.1:1/readyz"}, &bytes.Buffer{}); err == nil || isConfigError(err) {
		t.Fatalf("probe of a closed port must fail with exit status 1, got %v", err)
	}
	if err := dispatch(context.Background(), []string{"nonsense"}, &bytes.Buffer{}); !isConfigError(err) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("unknown command: %v", err)
	}
}
