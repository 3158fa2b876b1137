package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetbridge/connector/connector/connectortest"
)

// startTestDemo runs `connector demo args...` in the background until the
// test ends (it must then stop within 30 s, without an error) and returns
// what it writes to stdout.
func startTestDemo(t *testing.T, args ...string) *connectortest.Buffer {
	t.Helper()
	out := &connectortest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runDemo(ctx, args, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("demo did not stop within 30 s")
		}
	})
	return out
}

// The demo's printed `nats req` commands must work as pasted (sent here with
// nats.go; TestPrintedNATSCommandsRunWithTheRealCLI runs them with the nats
// CLI), and its curl URLs answer 200.
func TestDemoPrintedCommandsWork(t *testing.T) {
	natsAddr := freePort(t)
	t.Setenv("CONNECTOR_NATS_LISTEN", natsAddr)
	t.Setenv("CONNECTOR_HTTP_ADDR", freePort(t))
	out := startTestDemo(t, "-no-table")

	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "nats -s") {
		if time.Now().After(deadline) {
			t.Fatal("demo never printed its commands")
		}
		time.Sleep(20 * time.Millisecond)
	}
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	req := regexp.MustCompile(`nats -s \S+ req (\S+) '(.*)'`)
	sent := 0
	for _, line := range strings.Split(out.String(), "\n") {
		m := req.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var reply struct {
			OK    bool            `json:"ok"`
			Error json.RawMessage `json:"error"`
		}
		// The sources connect to their simulators in the background: retry
		// one-shot commands refused with not_connected for a moment.
		for attempt := 0; ; attempt++ {
			msg, err := nc.Request(m[1], []byte(m[2]), 10*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			reply.OK, reply.Error = false, nil
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatalf("%s: reply %s", line, msg.Data)
			}
			if reply.OK || attempt > 50 || !strings.Contains(string(reply.Error), "not_connected") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !reply.OK {
			t.Errorf("%s: refused: %s", strings.TrimSpace(line), reply.Error)
		}
		sent++
	}
	if sent < 4 {
		t.Fatalf("only %d request commands printed:\n%s", sent, out.String())
	}

	// The printed replay command, run as pasted (with the file in a temp dir):
	// the demo's exit signals of the last minute end up in the file.
	replay := regexp.MustCompile(`NATS_URL=(\S+) (?:go run \./cmd/connector|\./bin/connector|connector) replay (.*) --output (\S+)`).FindStringSubmatch(out.String())
	if replay == nil {
		t.Fatalf("no replay command printed:\n%s", out.String())
	}
	t.Setenv("NATS_URL", replay[1])
	file := filepath.Join(t.TempDir(), replay[3])
	connectortest.Eventually(t, 20*time.Second, "exit signals replayed", func() bool {
		args := append(strings.Fields(strings.ReplaceAll(replay[2], "'", "")), "--output", file, "--progress", "off")
		if err := runReplay(t.Context(), args, io.Discard, io.Discard); err != nil {
			t.Fatalf("%s: %v", replay[0], err)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(data), `"subject":"lasersell.`)
	})

	curls := regexp.MustCompile(`curl -s (http://\S+)`).FindAllStringSubmatch(out.String(), -1)
	if len(curls) != 3 {
		t.Fatalf("%d curl commands printed:\n%s", len(curls), out.String())
	}
	for _, m := range curls {
		// /readyz turns 200 once every simulated upstream is handshaken.
		connectortest.Eventually(t, 20*time.Second, m[1]+" answering 200", func() bool {
			resp, err := http.Get(m[1])
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
}
