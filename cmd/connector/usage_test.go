package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// runCLI runs the connector's main() in a child process (this test binary,
// see TestMain) with args and exactly env as its connector configuration, and
// returns its stdout, stderr and exit status.
func runCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	var environ []string
	for _, kv := range os.Environ() {
		keep := !strings.HasPrefix(kv, childModeEnv+"=") && !strings.HasPrefix(kv, childArgsEnv+"=")
		for _, p := range connectorVarPrefixes {
			keep = keep && !strings.HasPrefix(kv, p)
		}
		if keep {
			environ = append(environ, kv)
		}
	}
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	argv, _ := json.Marshal(args)
	environ = append(environ, childModeEnv+"=args", childArgsEnv+"="+string(argv))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = environ
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("connector %q did not exit within 30s; output %q %q", args, out.String(), errOut.String())
	case errors.As(err, &exit):
		status = exit.ExitCode()
	case err != nil:
		t.Fatalf("connector %q: %v", args, err)
	}
	return out.String(), errOut.String(), status
}

// A wrong command line is a usage error: one line on stderr naming the
// problem, never prefixed "configuration:" (the environment is fine), printed
// once, exit status 2, nothing on stdout.
func TestUsageErrorsPrintOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // the whole stderr, or a part of it when it ends in "..."
	}{
		{[]string{"bogus"}, `connector: unknown command "bogus" (connector help lists the commands)` + "\n"},
		{[]string{"config", "--chek"}, "connector: config: flag provided but not defined: -chek (connector config -h lists the flags)\n"},
		{[]string{"config", "extra"}, `connector: config takes no arguments, only --check (got "extra")` + "\n"},
		{[]string{"run", "extra"}, `connector: run: unexpected argument "extra"...`},
		{[]string{"run", "--verbose"}, "connector: run: flag provided but not defined: -verbose..."},
		{[]string{"sim"}, "connector: sim needs a simulator name..."},
		{[]string{"sim", "kafka"}, `connector: sim: unknown simulator "kafka"...`},
		{[]string{"sim", "lasersell", "--nope"}, "connector: sim lasersell: flag provided but not defined: -nope..."},
		{[]string{"probe", "--nope"}, "connector: probe: flag provided but not defined: -nope..."},
		{[]string{"replay", "--nope"}, "connector: replay: flag provided but not defined: -nope..."},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, status := runCLI(t, nil, tc.args...)
			if status != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "configuration:") {
				t.Fatalf("exit status %d, stdout %q, stderr %q: want status 2 and one usage line", status, stdout, stderr)
			}
			if want, prefix := strings.CutSuffix(tc.want, "..."); prefix && !strings.HasPrefix(stderr, want) || !prefix && stderr != want {
				t.Fatalf("stderr %q, want %q", stderr, tc.want)
			}
		})
	}
}

// `run --help` prints run's help and exits 0 instead of starting the connector.
func TestRunHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		stdout, stderr, status := runCLI(t, map[string]string{"CONNECTOR_HTTP_ADDR": ""}, "run", arg)
		if status != 0 || !strings.HasPrefix(stdout, "usage: connector run\n") || !strings.Contains(stdout, "connector config") || stderr != "" {
			t.Fatalf("run %s: exit status %d, stdout %q, stderr %q", arg, status, stdout, stderr)
		}
	}
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"run", "-h"}, &out); err != nil || !strings.HasPrefix(out.String(), "usage: connector run") {
		t.Fatalf("dispatch run -h: %v %q", err, out.String())
	}
	var ce *configError
	if err := dispatch(context.Background(), []string{"run", "extra"}, &bytes.Buffer{}); !errors.As(err, &ce) || !ce.usage {
		t.Fatalf("run extra: want a usage error, got %v", err)
	}
	if err := dispatch(context.Background(), []string{"config", "-h"}, &out); err != nil || !strings.Contains(out.String(), "usage: connector config") {
		t.Fatalf("config -h: %v %q", err, out.String())
	}
}

// Settings that look plausible but cannot work are refused by config --check
// and by run, with one line naming the variable and no secret.
func TestConfigCheckRefusesBadSettings(t *testing.T) {
	for _, tc := range []struct{ env, value, want string }{
		{"NATS_URL", "bogus", "NATS_URL: entry 1 has neither a scheme nor a port"},
		{"NATS_URL", "nats://host:99999", "NATS_URL: entry 1 has port 99999"},
		{"NATS_URL", "nats://127.0.0.1:4222,host:0", "NATS_URL: entry 2 has port 0"},
		{"NATS_URL", "nats://:4222", "NATS_URL: entry 1 is not a server URL"},
		{"NATS_URL", "nats://user:hunter2@host:70000", "NATS_URL: entry 1 has port 70000"},
		{"STREAM_LASERSEL_EXIT_MAX_AGE", "1h", "STREAM_LASERSEL_EXIT_MAX_AGE: there is no stream LASERSEL_EXIT; did you mean STREAM_LASERSELL_EXIT_MAX_AGE?"},
		{"STREAM_OPENSTREAM_DATA_MAXAGE", "1h", "stream OPENSTREAM_DATA has no setting MAXAGE; did you mean STREAM_OPENSTREAM_DATA_MAX_AGE?"},
		{"STREAM_RETENTION", "1h", "STREAM_RETENTION is not a stream setting"},
		{"NATS_USER", "alice", "NATS_USER is set without NATS_PASSWORD"},
		{"NATS_PASSWORD", "hunter2", "NATS_PASSWORD is set without NATS_USER"},
		{"GOGC", "abc", `GOGC="abc" must be a number`},
		{"GOGC", "400%", `GOGC="400%" must be a number`},
		{"GOMAXPROCS", "0", `GOMAXPROCS="0" must be a positive number`},
		{"GOMAXPROCS", "two", `GOMAXPROCS="two" must be a positive number`},
	} {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			t.Setenv("CONNECTOR_HTTP_ADDR", "")
			for _, args := range [][]string{{"config", "--check"}, {"run"}} {
				var out bytes.Buffer
				err := dispatch(context.Background(), args, &out)
				var ce *configError
				if !errors.As(err, &ce) || ce.usage {
					t.Fatalf("%s: want a configuration error (exit status 2), got %v", args, err)
				}
				msg := err.Error()
				if !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") || out.Len() != 0 {
					t.Fatalf("%s: error %q (output %q): want one line containing %q and no secret", args, msg, out.String(), tc.want)
				}
			}
		})
	}
}

// What nats.go accepts and a person plausibly means still passes.
func TestValidNATSURLs(t *testing.T) {
	for _, ok := range []string{
		"nats://127.0.0.1:4222", "127.0.0.1:4222", "nats://nats", "nats://user:pw@host:4222",
		"tls://a:1, ws://b:65535,wss://c", "nats://[::1]:4222", "[::1]:4222",
	} {
		if err := validNATSURLs(ok); err != nil {
			t.Errorf("NATS_URL=%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"bogus", "localhost", "nats://host:99999", "host:0", "nats://host:-1", "http://host:4222", "nats://", ":4222"} {
		if err := validNATSURLs(bad); err == nil {
			t.Errorf("NATS_URL=%s accepted", bad)
		}
	}
	for _, ok := range []string{"", "off", "100", "400", "-1"} {
		if err := validGOGC(ok); err != nil {
			t.Errorf("GOGC=%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"abc", "OFF", "1.5", " 100"} {
		if err := validGOGC(bad); err == nil {
			t.Errorf("GOGC=%q accepted", bad)
		}
	}
}

// Every stream's every setting is accepted; the suggestion for a misspelt
// stream is the nearest real one.
func TestStreamVariableNames(t *testing.T) {
	streams := []string{"LASERSELL_EXIT", "LASERSELL_PNL", "LASERSELL_EVENTS", "OPENSTREAM_DATA", "OPENSTREAM_EVENTS", "CONNECTOR_AUDIT"}
	var env []string
	for _, s := range streams {
		for _, f := range streamFields {
			env = append(env, "STREAM_"+s+"_"+f+"=x")
		}
	}
	if err := checkStreamVars(append(env, "PATH=/bin", "MY_STREAM_X=1"), streams); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"STREAM_LASERSELL_EVENT_MAX_AGE":    "did you mean STREAM_LASERSELL_EVENTS_MAX_AGE?",
		"STREAM_OPENSTREAM_DAT_STORAGE":     "did you mean STREAM_OPENSTREAM_DATA_STORAGE?",
		"STREAM_CONNECTOR_AUDIT_REPLICA":    "did you mean STREAM_CONNECTOR_AUDIT_REPLICAS?",
		"STREAM_LASERSELL_PNL_DUPLICATE_TS": "did you mean STREAM_LASERSELL_PNL_DUPLICATES?",
	} {
		err := checkStreamVars(append(env, name+"=1h"), streams)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
}

// `connector config` and `connector help` fit a terminal of 100 columns.
func TestConfigOutputFits100Columns(t *testing.T) {
	for _, args := range [][]string{{"config"}, {"help"}} {
		var out bytes.Buffer
		if err := dispatch(context.Background(), args, &out); err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(out.String(), "\n") {
			if n := utf8.RuneCountInString(line); n > 100 {
				t.Errorf("%s line %d is %d columns wide: %q", args[0], i+1, n, line)
			}
		}
	}
}
