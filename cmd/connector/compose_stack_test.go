package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/embednats"
)

// composeHosts maps "service:port" of docker-compose.yml to free loopback
// addresses, standing in for the compose network.
type composeHosts map[string]string

// rewrite replaces every service:port (and 0.0.0.0:port / :port of the given
// service) in s by its loopback stand-in.
func (h composeHosts) rewrite(service, s string) string {
	for from, to := range h {
		s = strings.ReplaceAll(s, from, to)
		if svc, port, _ := strings.Cut(from, ":"); svc == service {
			for _, own := range []string{"0.0.0.0:" + port, "127.0.0.1:" + port} {
				s = strings.ReplaceAll(s, own, to)
			}
			if s == ":"+port {
				s = to
			}
		}
	}
	return s
}

// The compose stack, brought up without Docker: a NATS server with
// JetStream, each simulator service run with its compose command, and the
// connector run with the compose environment, every service:port replaced by
// a loopback port. The health checks the compose file declares (its probe
// commands) must pass: the same commands Docker would run, minus Docker.
func TestComposeStackComesUp(t *testing.T) {
	compose := readCompose(t)
	hosts := composeHosts{}
	for name, svc := range compose.Services {
		for _, port := range containerPorts(t, svc.Ports) {
			hosts[name+":"+port] = freePort(t)
		}
		if name == "robot2" { // not published on the host, reachable inside the network
			hosts["robot2:49000"] = freePort(t)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running []chan error
	t.Cleanup(func() {
		cancel()
		for _, done := range running {
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Error("a compose service did not stop")
			}
		}
	})
	start := func(name string, args []string) {
		done := make(chan error, 1)
		running = append(running, done)
		go func() { done <- dispatch(ctx, args, io.Discard) }()
		t.Logf("%s: connector %s", name, strings.Join(args, " "))
	}

	nats, err := embednats.Start(embednats.Options{Listen: hosts["nats:4222"], StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("nats: %v", err)
	}
	t.Cleanup(nats.Stop)

	for _, name := range []string{"lasersell-sim", "robot1", "robot2"} {
		svc := compose.Services[name]
		args := make([]string, len(svc.Command))
		for i, a := range svc.Command {
			args[i] = hosts.rewrite(name, a)
		}
		start(name, args)
	}
	probe := func(name string) {
		test := compose.Services[name].Healthcheck.Test
		if len(test) < 3 || test[0] != "CMD" {
			t.Fatalf("%s health check %v is not a CMD", name, test)
		}
		args := make([]string, 0, len(test)-2)
		for _, a := range test[2:] { // after "CMD" and the entrypoint
			args = append(args, hosts.rewrite(name, a))
		}
		connectortest.Eventually(t, 30*time.Second, name+" health check "+strings.Join(args, " "), func() bool {
			return dispatch(ctx, args, &bytes.Buffer{}) == nil
		})
	}
	probe("lasersell-sim") // the connector depends on it being healthy

	conn := compose.Services["connector"]
	for k, v := range conn.Environment {
		if k == "LASERSELL_API_KEY_FILE" {
			v = "../../" + strings.TrimPrefix(compose.Secrets[conn.Secrets[0]].File, "./")
		}
		t.Setenv(k, hosts.rewrite("connector", v))
	}
	t.Setenv("LOG_LEVEL", "error")
	t.Setenv("CONNECTOR_DRAIN_TIMEOUT", "3s")
	start("connector", conn.Command)
	probe("connector") // /readyz: NATS, streams and buckets, every upstream session handshaken
}
