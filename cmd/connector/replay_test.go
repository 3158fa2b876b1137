package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/replay"
	"github.com/jetbridge/connector/subjects"
)

func TestReplayFlagErrorsAreUsageErrors(t *testing.T) {
	// None of these gets as far as connecting: there is no server.
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	for _, args := range [][]string{
		{},
		{"--subject", "x", "--end-seq", "3", "--until", "1h"},
		{"--subject", "a..b"},
		{"--subject", "x", "--since", "yesterday"},
		{"--subject", "x", "--since", "-2h"},
		{"--subject", "x", "--until", "2024-13-01T00:00:00Z"},
		{"--subject", "x", "--since", "1h", "--start-seq", "3"},
		{"--subject", "x", "--start-seq", "5", "--end-seq", "4"},
		{"--subject", "x", "--speed", "0"},
		{"--subject", "x", "--speed", "fast"},
		{"--subject", "x", "--to", "sandbox", "--output", "f.ndjson"},
		{"--subject", "x", "--to", ""},
		{"--subject", "x", "--progress", "sometimes"},
		{"--subject", "x", "--bogus"},
		{"--subject", "x", "stray"},
	} {
		var stdout, stderr bytes.Buffer
		err := runReplay(context.Background(), args, &stdout, &stderr)
		var ce *configError
		if !errors.As(err, &ce) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: wrote to stdout: %q", args, stdout.String())
		}
	}
	var stderr bytes.Buffer
	if err := runReplay(context.Background(), []string{"-h"}, &bytes.Buffer{}, &stderr); err != nil || !strings.Contains(stderr.String(), "usage: connector replay") || !strings.Contains(stderr.String(), "-subject") {
		t.Fatalf("-h: %v, %q", err, stderr.String())
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2h":                             now.Add(-2 * time.Hour),
		"90s":                            now.Add(-90 * time.Second),
		"2025-05-31T10:00:00Z":           time.Date(2025, 5, 31, 10, 0, 0, 0, time.UTC),
		"2025-05-31T10:00:00.5+02:00":    time.Date(2025, 5, 31, 8, 0, 0, 5e8, time.UTC),
		"2025-05-31T10:00:00.123456789Z": time.Date(2025, 5, 31, 10, 0, 0, 123456789, time.UTC),
	} {
		if got, err := parseWhen(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if got, err := parseWhen("", now); err != nil || !got.IsZero() {
		t.Errorf("empty: %v, %v", got, err)
	}
}

// replayServer starts an embedded JetStream server with the connector's
// streams and points the environment at it.
func replayServer(t *testing.T) (*nats.Conn, jetstream.JetStream, *embednats.Server) {
	t.Helper()
	srv, nc, js := startTestNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := connector.Provision(ctx, js, subjects.Streams(subjects.LaserSell(), subjects.OpenStream()), connector.DefaultRetention, nil, 1); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_URL", srv.URL())
	return nc, js, srv
}

func publishExits(t *testing.T, js jetstream.JetStream, session string, n int) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seqs []uint64
	for i := range n {
		ack, err := js.PublishMsg(ctx, &nats.Msg{
			Subject: subjects.LaserSellExit(session, "W"+strconv.Itoa(i%2)),
			Header:  nats.Header{subjects.HeaderType: {"exit_signal_with_tx"}},
			Data:    []byte(`{"type":"exit_signal_with_tx","i":` + strconv.Itoa(i) + `}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	return seqs
}

func TestReplayCommandEndToEnd(t *testing.T) {
	nc, js, srv := replayServer(t)
	seqs := publishExits(t, js, "cli", 6)
	ctx := context.Background()

	// The last hour of one session's exits to a file.
	file := filepath.Join(t.TempDir(), "exits.ndjson")
	var stdout, stderr bytes.Buffer
	if err := runReplay(ctx, []string{"--subject", "lasersell.cli.exit.*", "--since", "1h", "--output", file, "--progress", "off"}, &stdout, &stderr); err != nil {
		t.Fatalf("to file: %v\n%s", err, stderr.String())
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := replay.DecodeRecords(f)
	if err != nil || len(recs) != 6 || recs[0].Seq != seqs[0] || recs[5].Headers[subjects.HeaderType][0] != "exit_signal_with_tx" {
		t.Fatalf("file: %d records, %v", len(recs), err)
	}
	if stdout.Len() != 0 || !strings.Contains(stderr.String(), "replay: 6 messages from LASERSELL_EXIT") || !strings.Contains(stderr.String(), file) {
		t.Fatalf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}

	// A replay that fails (a filter no stream captures) leaves the earlier
	// export untouched and no partial file behind.
	before, _ := os.ReadFile(file)
	if err := runReplay(ctx, []string{"--subject", "lasersell.cli.exti.*", "--output", file, "--progress", "off"}, io.Discard, io.Discard); err == nil {
		t.Fatal("a filter no stream captures was accepted")
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(after, before) {
		t.Fatalf("a failed replay changed the earlier export (%d -> %d bytes)", len(before), len(after))
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*.partial")); len(left) != 0 {
		t.Fatalf("partial files left behind: %v", left)
	}

	// A sequence range of one wallet, to stdout, through the embedded
	// server's address when NATS_URL is empty.
	t.Setenv("NATS_URL", "")
	t.Setenv("CONNECTOR_NATS_LISTEN", srv.Addr().(*net.TCPAddr).String())
	stdout.Reset()
	stderr.Reset()
	if err := runReplay(ctx, []string{"--subject", "lasersell.cli.exit.W1", "--start-seq", strconv.FormatUint(seqs[1], 10), "--end-seq", strconv.FormatUint(seqs[4], 10)}, &stdout, &stderr); err != nil {
		t.Fatalf("to stdout: %v\n%s", err, stderr.String())
	}
	recs, err = replay.DecodeRecords(&stdout)
	if err != nil || len(recs) != 2 || recs[0].Seq != seqs[1] || recs[1].Seq != seqs[3] {
		t.Fatalf("stdout: %+v, %v", recs, err)
	}
	t.Setenv("NATS_URL", srv.URL())

	// Re-publish to a sandbox prefix; the live prefix is refused as a usage error.
	sub, err := nc.SubscribeSync("sandbox.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := runReplay(ctx, []string{"--subject", "lasersell.cli.exit.W0", "--to", "sandbox", "--speed", "max"}, &stdout, &stderr); err != nil {
		t.Fatalf("--to: %v\n%s", err, stderr.String())
	}
	for i := range 3 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil || m.Subject != "sandbox.lasersell.cli.exit.W0" || m.Header.Get(subjects.HeaderReplaySeq) != strconv.FormatUint(seqs[2*i], 10) {
			t.Fatalf("copy %d: %v %v", i, m, err)
		}
	}
	err = runReplay(ctx, []string{"--subject", "lasersell.cli.exit.W0", "--to", "lasersell.copy"}, &stdout, &stderr)
	var ce *configError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "live source kind") {
		t.Fatalf("--to lasersell.copy: got %v, want a usage error", err)
	}

	// Nothing listening: a clear error within the connect timeout, not a hang.
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	err = runReplay(ctx, []string{"--subject", "x", "--connect-timeout", "300ms"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("unreachable NATS: %v", err)
	}
}

// notifyingBuffer is a goroutine-safe buffer that reports when a string first
// appears in it.
type notifyingBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	want   string
	seen   chan struct{}
	closed bool
}

func (b *notifyingBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if !b.closed && strings.Contains(b.buf.String(), b.want) {
		b.closed = true
		close(b.seen)
	}
	return n, err
}

func (b *notifyingBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestReplayCommandCtrlCFlushesAndSummarises(t *testing.T) {
	_, js, _ := replayServer(t)
	seqs := publishExits(t, js, "int", 3)

	// At speed 0.00001 the gap after the first message becomes seconds long:
	// the interrupt lands while the replay waits for the second.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &notifyingBuffer{want: "1/3 msgs", seen: make(chan struct{})}
	var stdout bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runReplay(ctx, []string{"--subject", "lasersell.int.exit.*", "--speed", "0.00001", "--progress", "on"}, &stdout, stderr)
	}()
	select {
	case <-stderr.seen:
	case err := <-done:
		t.Fatalf("replay ended before the interrupt: %v\n%s", err, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("progress never showed the first message: %q", stderr.String())
	}
	cancel() // Ctrl-C
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("replay did not stop after the interrupt")
	}
	if !errors.Is(err, errInterrupted) {
		t.Fatalf("got %v, want errInterrupted (exit status 130 in main)", err)
	}
	recs, derr := replay.DecodeRecords(&stdout)
	if derr != nil || len(recs) != 1 || recs[0].Seq != seqs[0] {
		t.Fatalf("flushed output: %+v, %v", recs, derr)
	}
	want := "replay: interrupted: 1 messages from LASERSELL_EXIT written to stdout, last seq " + strconv.FormatUint(seqs[0], 10)
	if !strings.Contains(stderr.String(), want) {
		t.Fatalf("stderr %q lacks the summary %q", stderr.String(), want)
	}
}
