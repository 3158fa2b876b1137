package main

// Helpers for the tests that run the real connector as a child process
// (crash_test.go, secrets_test.go): re-executing the test binary, capturing
// its output, and reading back everything it left in NATS.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector/connectortest"
)

// childModeEnv makes TestMain run the connector's own main() instead of the
// tests. The child is this test binary, so it is always built from the
// current source with the same flags (-race included), without a separate
// `go build`. The name has none of the connector's variable prefixes.
const childModeEnv = "GO_TEST_CONNECTOR_CHILD"

// childArgsEnv holds, in child mode "args", the command line (a JSON array)
// the child's main() sees.
const childArgsEnv = "GO_TEST_CONNECTOR_ARGS"

func TestMain(m *testing.M) {
	switch os.Getenv(childModeEnv) {
	case "run":
		os.Args = []string{os.Args[0], "run"}
		main()
		os.Exit(0)
	case "args":
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &args); err != nil {
			fmt.Fprintln(os.Stderr, "test child:", childArgsEnv, err)
			os.Exit(99)
		}
		os.Args = append([]string{os.Args[0]}, args...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// connectorVarPrefixes are the prefixes of every variable the connector
// reads; the developer's own settings must not leak into a child.
var connectorVarPrefixes = []string{"LASERSELL_", "OPENSTREAM_", "NATS_", "CONNECTOR_", "STREAM_", "LOG_", "GOGC=", "GOMAXPROCS="}

// connectorProc is one `connector run` child process.
type connectorProc struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	out     *connectortest.Buffer // stdout and stderr, interleaved
	started time.Time
	exited  chan struct{}
	waitErr error
}

// startConnectorProc runs `connector run` with exactly env as its connector
// configuration (plus the inherited non-connector environment). The process
// is killed at cleanup if still running; its output is logged when the test
// failed.
func startConnectorProc(t testing.TB, name string, env map[string]string) *connectorProc {
	t.Helper()
	var environ []string
	for _, kv := range os.Environ() {
		keep := true
		for _, p := range connectorVarPrefixes {
			if strings.HasPrefix(kv, p) {
				keep = false
			}
		}
		if keep && !strings.HasPrefix(kv, childModeEnv+"=") {
			environ = append(environ, kv)
		}
	}
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	environ = append(environ, childModeEnv+"=run")

	p := &connectorProc{t: t, name: name, out: &connectortest.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = environ
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	// The child dies with the test process even if the cleanup never runs.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start connector %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			out := p.out.Bytes()
			if len(out) > 64<<10 {
				out = out[len(out)-64<<10:]
			}
			t.Logf("connector %s output (tail):\n%s", name, out)
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *connectorProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// stop sends SIGTERM and waits up to timeout for a clean exit.
func (p *connectorProc) stop(timeout time.Duration) error {
	select {
	case <-p.exited:
		return p.waitErr
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.waitErr
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("connector %s did not stop within %s after SIGTERM", p.name, timeout)
	}
}

func (p *connectorProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// output is everything the child wrote so far.
func (p *connectorProc) output() []byte { return p.out.Bytes() }

// checkNoRace fails the test when the (race-enabled) child reported a data race.
func (p *connectorProc) checkNoRace() {
	p.t.Helper()
	if bytes.Contains(p.output(), []byte("WARNING: DATA RACE")) {
		p.t.Errorf("connector %s reported a data race", p.name)
	}
}

// freeLoopbackAddr returns a loopback address with a port that was free a moment ago.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitUntil polls cond every 10 ms until it returns nil; after timeout it
// fails the test with cond's last error.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

// commandReply is a command's reply as the tests look at it.
type commandReply struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code string `json:"code"`
	} `json:"error"`
	raw []byte
}

// replyOutcome names how a command request ended, for tallies: "ok", the
// refusal's code, "no_responders", "error: <the request's error>", "not
// JSON", or "refused without an error".
func replyOutcome(m *nats.Msg, err error) string {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return "no_responders"
	case err != nil:
		return "error: " + err.Error()
	}
	var r commandReply
	switch {
	case json.Unmarshal(m.Data, &r) != nil:
		return "not JSON"
	case r.OK:
		return "ok"
	case r.Error == nil:
		return "refused without an error"
	}
	return r.Error.Code
}

// requestCommand sends a command, retrying while nobody serves the subject
// yet (the child is still starting), and returns the decoded reply.
func requestCommand(t testing.TB, nc *nats.Conn, subject, body string, timeout time.Duration) commandReply {
	t.Helper()
	var msg *nats.Msg
	waitUntil(t, timeout, "a reply on "+subject, func() error {
		m, err := nc.Request(subject, []byte(body), 3*time.Second)
		if err != nil {
			return err
		}
		msg = m
		return nil
	})
	r := commandReply{raw: msg.Data}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("reply on %s is not JSON: %v: %q", subject, err, msg.Data)
	}
	return r
}

// storedMsg is one message read back from a stream.
type storedMsg struct {
	Stream  string
	Seq     uint64
	Subject string
	Header  nats.Header
	Data    []byte
}

// readStream returns every message stream holds now, in order.
func readStream(t testing.TB, js jetstream.JetStream, stream string) []storedMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	want := info.State.Msgs
	if want == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("consumer on %s: %v", stream, err)
	}
	var out []storedMsg
	for uint64(len(out)) < want && ctx.Err() == nil {
		batch, err := cons.Fetch(int(min(want-uint64(len(out)), 512)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("fetch from %s: %v", stream, err)
		}
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				t.Fatalf("metadata in %s: %v", stream, err)
			}
			out = append(out, storedMsg{Stream: stream, Seq: meta.Sequence.Stream, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			if meta.Sequence.Stream >= info.State.LastSeq {
				return out
			}
		}
	}
	if uint64(len(out)) < want {
		t.Fatalf("read %d of %d messages from %s", len(out), want, stream)
	}
	return out
}

// streamNames lists every stream of the account, KV buckets' streams included.
func streamNames(t testing.TB, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lister := js.StreamNames(ctx)
	var names []string
	for n := range lister.Name() {
		names = append(names, n)
	}
	if err := lister.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return names
}

// lastSeq is the last sequence number stream has stored (0 when it does not exist yet).
func lastSeq(js jetstream.JetStream, stream string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// httpBody fetches url and returns its body whatever the status.
func httpBody(url string) ([]byte, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// logMeasured logs a test's MEASURED line. Its wording states what the test
// asserted ("duplicates 0", "no lease moved"), so it is a result only when
// every assertion held: after a failure the figures are logged as such.
func logMeasured(t *testing.T, format string, args ...any) {
	t.Helper()
	if t.Failed() {
		t.Logf("not a measurement (the test failed; the wording below states what it asserts): "+format, args...)
		return
	}
	t.Logf("MEASURED "+format, args...)
}
