package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// demoLeaseTTL is the demo fleet's lease TTL unless CONNECTOR_LEASE_TTL is
// set: short enough to watch a crashed replica's sessions move (a single
// embedded server has no leader elections to outlast).
const demoLeaseTTL = 5 * time.Second

// demoRestartAfter is how long a replica that exited stays down before the
// demo starts it again, so its sessions can be watched moving back.
const demoRestartAfter = 5 * time.Second

// replicaProcs runs the demo fleet: n `connector run` processes of this
// binary, each restarted demoRestartAfter after it exits, until ctx ends
// (then each gets SIGTERM).
type replicaProcs struct {
	exe  string
	env  []string // shared by all; each adds its name and HTTP address
	http []string // per replica: its CONNECTOR_HTTP_ADDR ("" for none)
	log  zerolog.Logger
	out  io.Writer // their log lines, prefixed with the replica's name

	mu   sync.Mutex
	pids []int // 0 while down
}

// demoReplicaName is the CONNECTOR_REPLICA of the demo fleet's replica i.
func demoReplicaName(i int) string { return fmt.Sprintf("replica-%d", i+1) }

// run supervises replica i until ctx ends.
func (p *replicaProcs) run(ctx context.Context, i int) {
	name := demoReplicaName(i)
	for ctx.Err() == nil {
		cmd := exec.Command(p.exe, "run")
		cmd.Env = append(slices.Clone(p.env), "CONNECTOR_REPLICA="+name, "CONNECTOR_HTTP_ADDR="+p.http[i])
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // they die with the demo
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		var copying sync.WaitGroup
		copying.Go(func() { p.copyLines(name, pr) })
		if err := cmd.Start(); err != nil {
			_ = pw.Close()
			copying.Wait()
			p.log.Error().Err(err).Str("replica", name).Msg("cannot start the replica")
			return
		}
		p.setPID(i, cmd.Process.Pid)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			p.log.Warn().Str("replica", name).Str("exit", exitText(err)).Dur("restart_in_ms", demoRestartAfter).Msg("replica exited; the demo restarts it")
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		p.setPID(i, 0)
		_ = pw.Close()
		copying.Wait()
		if !connector.Sleep(ctx, demoRestartAfter) {
			return
		}
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// copyLines writes a replica's output to p.out, each line prefixed.
func (p *replicaProcs) copyLines(name string, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		_, _ = fmt.Fprintf(p.out, "[%s] %s\n", name, sc.Text())
	}
	_, _ = io.Copy(io.Discard, r) // a line too long: keep the pipe flowing
}

func (p *replicaProcs) setPID(i, pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pids[i] = pid
}

func (p *replicaProcs) pidOf(i int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pids[i]
}

// leaseBoard follows CONNECTOR_LEASES for the demo's table: who owns each
// session, with which epoch.
type leaseBoard struct {
	mu     sync.Mutex
	owners map[string]string
}

func (b *leaseBoard) follow(ctx context.Context, nc *nats.Conn, log zerolog.Logger) {
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error().Err(err).Msg("demo: cannot follow the leases; the owners stay unknown")
		return
	}
	for ctx.Err() == nil {
		kv, err := js.KeyValue(ctx, subjects.BucketLeases)
		var w jetstream.KeyWatcher
		if err == nil {
			w, err = kv.WatchAll(ctx)
		}
		if err != nil {
			log.Debug().Err(err).Msg("demo: the leases bucket is not there yet")
			connector.Sleep(ctx, time.Second)
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			var doc struct {
				Replica string `json:"replica"`
				Epoch   uint64 `json:"epoch"`
			}
			owner := "(none: moving)"
			if e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &doc) == nil {
				owner = fmt.Sprintf("%s (epoch %d)", doc.Replica, doc.Epoch)
			}
			b.mu.Lock()
			b.owners[e.Key()] = owner
			b.mu.Unlock()
		}
		_ = w.Stop()
	}
}

// render is the ownership part of the demo's table.
func (b *leaseBoard) render(p *replicaProcs) string {
	b.mu.Lock()
	keys := make([]string, 0, len(b.owners))
	for k := range b.owners {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	sb.WriteString("\nsession owners (CONNECTOR_LEASES):\n")
	for _, k := range keys {
		fmt.Fprintf(&sb, "  %-20s %s\n", k, b.owners[k])
	}
	b.mu.Unlock()
	sb.WriteString("replicas (kill -9 PID crashes one: its sessions move after the lease TTL; kill PID hands them over at once):\n")
	for i := range p.pids {
		state := "down, restarting"
		if pid := p.pidOf(i); pid != 0 {
			state = "pid " + strconv.Itoa(pid)
		}
		fmt.Fprintf(&sb, "  %-10s %s\n", demoReplicaName(i), state)
	}
	return sb.String()
}

// replicaHTTPAddrs gives each replica the port after the previous one,
// starting after the demo's CONNECTOR_HTTP_ADDR ("" disables them all).
func replicaHTTPAddrs(base string, n int) ([]string, error) {
	out := make([]string, n)
	if base == "" {
		return out, nil
	}
	host, port, err := net.SplitHostPort(base)
	if err != nil {
		return nil, badConfig("CONNECTOR_HTTP_ADDR=%q is not host:port", base)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p == 0 {
		return nil, badConfig("CONNECTOR_HTTP_ADDR=%q: demo -replicas needs a fixed port (replicas take the next ones)", base)
	}
	for i := range out {
		out[i] = net.JoinHostPort(host, strconv.Itoa(p+1+i))
	}
	return out, nil
}

// replicaEnv is the environment of the demo's replicas: this process's,
// with NATS, the kinds' demo sessions and the demo's defaults.
func replicaEnv(natsURL string, kindEnv map[string]string) []string {
	env := []string{}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, override := kindEnv[name]; override || name == "NATS_URL" || name == "CONNECTOR_SOURCES" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "NATS_URL="+natsURL, "CONNECTOR_SOURCES=auto")
	for k, v := range kindEnv {
		env = append(env, k+"="+v)
	}
	if _, set := os.LookupEnv("CONNECTOR_LEASE_TTL"); !set {
		env = append(env, "CONNECTOR_LEASE_TTL="+demoLeaseTTL.String())
	}
	if _, set := os.LookupEnv("LOG_LEVEL"); !set {
		env = append(env, "LOG_LEVEL=warn")
	}
	if _, set := os.LookupEnv("LOG_FORMAT"); !set {
		env = append(env, "LOG_FORMAT=console")
	}
	return env
}
