package main

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// composeHosts maps "service:port" of a compose file to free loopback
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

// composeRun brings up the services of a compose file without Docker: the
// simulators in process with their compose commands, NATS and connectors as
// each test says, every service:port replaced by a loopback port. What it
// starts in process stops at the test's cleanup.
type composeRun struct {
	t       *testing.T
	compose composeFile
	hosts   composeHosts
	ctx     context.Context
}

func newComposeRun(t *testing.T, file string) *composeRun {
	t.Helper()
	compose := readComposeFile(t, file)
	hosts := composeHosts{}
	// Every service gets its own port: a port freed a moment ago can be
	// handed out again (a connector's HTTP address once came out the same
	// as a robot's, and it never became ready).
	taken := map[string]bool{}
	port := func() string {
		for {
			if a := freePort(t); !taken[a] {
				taken[a] = true
				return a
			}
		}
	}
	for name, svc := range compose.Services {
		for _, p := range append(containerPorts(t, svc.Ports), svc.Expose...) {
			hosts[name+":"+p] = port()
		}
		if name == "robot2" { // not published on the host, reachable inside the network
			hosts["robot2:49000"] = port()
		}
	}
	return &composeRun{t: t, compose: compose, hosts: hosts, ctx: t.Context()}
}

// inProcess runs `connector args...` in this process until the test ends.
func (r *composeRun) inProcess(name string, args []string) {
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- dispatch(ctx, args, io.Discard) }()
	// Cleanups run last-in first-out: a service registered after NATS
	// stops before it.
	r.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			r.t.Errorf("compose service %s did not stop", name)
		}
	})
	r.t.Logf("%s: connector %s", name, strings.Join(args, " "))
}

// startSims runs the simulator services with their compose commands.
func (r *composeRun) startSims() {
	for _, name := range []string{"lasersell-sim", "robot1", "robot2"} {
		svc := r.compose.Services[name]
		args := make([]string, len(svc.Command))
		for i, a := range svc.Command {
			args[i] = r.hosts.rewrite(name, a)
		}
		r.inProcess(name, args)
	}
}

// probe waits until the service's health check passes: the probe command
// it declares, or for an image with wget (nats) the same GET through the
// binary's probe (both exit 0 on a 2xx answer).
func (r *composeRun) probe(name string, within time.Duration) {
	r.t.Helper()
	test := r.compose.Services[name].Healthcheck.Test
	if len(test) < 3 || test[0] != "CMD" {
		r.t.Fatalf("%s health check %v is not a CMD", name, test)
	}
	var args []string
	switch {
	case test[2] == "probe":
		for _, a := range test[2:] { // after "CMD" and the entrypoint
			args = append(args, r.hosts.rewrite(name, a))
		}
	case test[1] == "wget" && strings.HasPrefix(test[len(test)-1], "http://"):
		args = []string{"probe", r.hosts.rewrite(name, test[len(test)-1])}
	default:
		r.t.Fatalf("%s health check %v: neither the probe nor wget of a URL", name, test)
	}
	connectortest.Eventually(r.t, within, name+" health check "+strings.Join(args, " "), func() bool {
		return dispatch(r.ctx, args, &bytes.Buffer{}) == nil
	})
}

// connectorEnv is the service's compose environment with every
// service:port rewritten, its secret read from the repository, and a short
// drain at stop.
func (r *composeRun) connectorEnv(name string) map[string]string {
	svc := r.compose.Services[name]
	env := map[string]string{}
	for k, v := range svc.Environment {
		if k == "LASERSELL_API_KEY_FILE" {
			v = "../../" + strings.TrimPrefix(r.compose.Secrets[svc.Secrets[0]].File, "./")
		}
		env[k] = r.hosts.rewrite(name, v)
	}
	env["CONNECTOR_DRAIN_TIMEOUT"] = "3s"
	return env
}

// The compose stack, brought up without Docker: a NATS server with
// JetStream, each simulator service run with its compose command, and the
// connector run with the compose environment, every service:port replaced by
// a loopback port. The health checks the compose file declares (its probe
// commands) must pass: the same commands Docker would run, minus Docker.
func TestComposeStackComesUp(t *testing.T) {
	r := newComposeRun(t, composeLocal)
	nats, err := embednats.Start(embednats.Options{Listen: r.hosts["nats:4222"], StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("nats: %v", err)
	}
	t.Cleanup(nats.Stop)
	r.startSims()
	r.probe("lasersell-sim", 30*time.Second) // the connector depends on it being healthy

	conn := r.compose.Services["connector"]
	for k, v := range r.connectorEnv("connector") {
		t.Setenv(k, v)
	}
	t.Setenv("LOG_LEVEL", "error")
	r.inProcess("connector", conn.Command)
	r.probe("connector", 30*time.Second) // /readyz: NATS, streams and buckets, every upstream session handshaken
}

// The cluster stack, brought up the same way: each NATS node runs with its
// compose command as nats-server parses it (names, cluster, routes,
// JetStream; addresses mapped to loopback, a fresh store), every node's
// health check must pass, then the three connector replicas run as `connector
// run` processes with their compose environments until each one's /readyz
// health check passes, and the fleet places every session on exactly one
// replica, its preferred one.
func TestComposeClusterStackComesUp(t *testing.T) {
	r := newComposeRun(t, composeCluster)
	stack := composeStack{compose: r.compose}
	for name, svc := range r.compose.Services {
		switch {
		case strings.HasPrefix(svc.Image, "nats:"):
			stack.nats = append(stack.nats, name)
		case len(svc.Command) > 0 && svc.Command[0] == "run":
			stack.connectors = append(stack.connectors, name)
		}
	}
	for _, name := range stack.nats {
		args := make([]string, len(r.compose.Services[name].Command))
		for i, a := range r.compose.Services[name].Command {
			args[i] = r.hosts.rewrite(name, a)
		}
		opts := natsCommandOptions(t, args)
		opts.Host, opts.HTTPHost = "127.0.0.1", "127.0.0.1"
		opts.Port = loopbackPort(t, r.hosts[name+":"+natsClientPort(opts)])
		opts.HTTPPort = loopbackPort(t, r.hosts[name+":"+strconv.Itoa(opts.HTTPPort)])
		opts.StoreDir = t.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("%s: nats-server %v: %v", name, args, err)
		}
		go s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		t.Logf("%s: nats-server %s", name, strings.Join(args, " "))
	}
	start := time.Now()
	for _, name := range stack.nats {
		r.probe(name, 60*time.Second) // healthz: a current member of the formed cluster
	}
	natsHealthy := time.Since(start)
	r.startSims()
	r.probe("lasersell-sim", 30*time.Second)

	var statusAddrs []string
	for _, name := range stack.connectors {
		if cmd := r.compose.Services[name].Command; len(cmd) != 1 || cmd[0] != "run" {
			t.Fatalf("%s runs %v; the test runs `connector run`", name, cmd)
		}
		env := r.connectorEnv(name)
		startConnectorProc(t, name, env)
		statusAddrs = append(statusAddrs, env["CONNECTOR_HTTP_ADDR"])
	}
	// /readyz. Three replicas provisioning the same R3 streams and buckets
	// on a fresh cluster took 41-57 s here while each replica sent an update
	// for every asset another had just created (a new stream's leader then
	// came about 10 s after its create; not understood). Skipping assets
	// already as configured brought it to 11-17 s; the margin stays.
	for _, name := range stack.connectors {
		r.probe(name, 120*time.Second)
	}
	ready := time.Since(start)
	env := r.compose.Services[stack.connectors[0]].Environment
	sessions := []string{subjects.SessionKey(subjects.KindLaserSell, env["LASERSELL_SESSION"])}
	for _, robot := range strings.Split(env["OPENSTREAM_ROBOTS"], ",") {
		name, _, _ := strings.Cut(robot, "=")
		sessions = append(sessions, subjects.SessionKey(subjects.KindOpenStream, name))
	}
	waitUntil(t, 30*time.Second, "every session on exactly one replica, its preferred one", func() error {
		return fleetSettled(statusAddrs, sessions)
	})
	t.Logf("cluster stack: NATS nodes healthy after %v, replicas ready after %v, every session on its preferred replica after %v",
		natsHealthy.Round(time.Millisecond), ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// loopbackPort is the port of a loopback stand-in address.
func loopbackPort(t *testing.T, addr string) int {
	t.Helper()
	port, err := strconv.Atoi(portOf(t, addr))
	if err != nil {
		t.Fatalf("stand-in address %q: %v", addr, err)
	}
	return port
}
