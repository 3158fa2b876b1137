package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// natsCLI finds the nats CLI: on PATH or where `go install` puts it.
// .ci/run installs the pinned natscli and sets CONNECTOR_TEST_NATS_CLI=required.
func natsCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "nats")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CONNECTOR_TEST_NATS_CLI") == "required" {
		t.Fatal("the nats CLI is not installed (go install github.com/nats-io/natscli/nats@v0.5.0)")
	}
	t.Skip("the nats CLI is not installed: go install github.com/nats-io/natscli/nats@v0.5.0 (.ci/run does)")
	return ""
}

// shellWords splits a pasted command line the way sh does for what the
// README and the demo print: words, 'single-quoted' words, a trailing
// # comment.
func shellWords(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted:
			if c == '\'' {
				quoted = false
			} else {
				cur.WriteByte(c)
			}
		case c == '\'':
			quoted, inWord = true, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '"' || c == '\\' || c == '$' || c == '`' || c == '|' || c == ';':
			return nil, fmt.Errorf("unsupported shell syntax %q in %s", c, line)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %s", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// Every nats command the demo prints, and every one the README gives for
// the demo's names, runs as pasted with the real nats CLI (v0.5.0) against
// the demo, and succeeds. Subscriptions (which run until Ctrl-C) get
// --count 1 when they have no count; `nats stream view` pages in a terminal
// and is left out, as are the lines of the compose stack's section and those
// sent to the background.
func TestPrintedNATSCommandsRunWithTheRealCLI(t *testing.T) {
	cli := natsCLI(t)
	natsAddr := freePort(t)
	url := "nats://" + natsAddr
	t.Setenv("CONNECTOR_NATS_LISTEN", natsAddr)
	t.Setenv("CONNECTOR_HTTP_ADDR", freePort(t))
	out := startTestDemo(t, "-no-table")
	waitUntil(t, 30*time.Second, "the demo's commands printed", func() error {
		if !strings.Contains(out.String(), "nats -s") {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	type command struct{ where, line string }
	var commands []command
	for _, l := range strings.Split(out.String(), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "nats ") {
			commands = append(commands, command{"demo", l})
		}
	}
	section, inCode := "", false
	sc := bufio.NewScanner(strings.NewReader(readmeText(t)))
	heading := regexp.MustCompile(`^#{2,4} `)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "```"):
			inCode = !inCode
		case !inCode && heading.MatchString(l):
			section = l
		case inCode && strings.HasPrefix(l, "nats "):
			if section == "### Local stack" || strings.Contains(l, " stream view ") || strings.HasSuffix(strings.TrimSpace(strings.SplitN(l, "#", 2)[0]), "&") {
				continue
			}
			commands = append(commands, command{"README " + section, strings.ReplaceAll(l, "nats://127.0.0.1:4222", url)})
		}
	}
	if len(commands) < 20 {
		t.Fatalf("only %d nats commands found in the demo and the README", len(commands))
	}
	// Time for data to accumulate (the README reads sequence 5,000 of the
	// MONITOR data at 500 Hz) and for exit signals (every 7 s).
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "the demo's streams filled", func() error {
		if n := lastSeq(js, subjects.StreamOpenStreamData); n < 5200 {
			return fmt.Errorf("%s at %d", subjects.StreamOpenStreamData, n)
		}
		if n := lastSeq(js, subjects.StreamLaserSellExit); n < 1 {
			return fmt.Errorf("no exit yet")
		}
		return nil
	})
	for _, c := range commands {
		words, err := shellWords(c.line)
		if err != nil {
			t.Errorf("%s: %v", c.where, err)
			continue
		}
		args := words[1:]
		if !strings.Contains(c.line, " -s ") {
			args = append([]string{"-s", url}, args...)
		}
		sub := slices.Contains(args, "sub")
		replay := slices.Contains(args, "--since") || slices.Contains(args, "--start-sequence")
		if sub && replay && !slices.Contains(args, "--count") {
			args = append(args, "--count", "1")
		}
		limit := 30 * time.Second
		if sub && !replay {
			// A live subscription runs until Ctrl-C and may see nothing (a
			// status changes rarely): it works when it subscribed.
			limit = 3 * time.Second
		}
		cctx, ccancel := context.WithTimeout(context.Background(), limit)
		cmd := exec.CommandContext(cctx, cli, args...)
		cmd.Env = append(os.Environ(), "NATS_CONTEXT=") // no user context
		output, err := cmd.CombinedOutput()
		timedOut := cctx.Err() != nil
		ccancel()
		switch {
		case sub && !replay && timedOut && strings.Contains(string(output), "Subscribing on"):
		case err != nil:
			t.Errorf("%s: %s\n  -> %v\n%s", c.where, c.line, err, tail(output, 600))
		}
	}
	t.Logf("%d nats commands ran with %s", len(commands), cli)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
