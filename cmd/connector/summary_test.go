package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector/connectortest"
)

// With stdout not a terminal (a file, a pipe, here a buffer) the demo writes
// no escape code, its commands once, and then at most one short line of
// totals per interval, however many messages flow (the simulated robot alone
// sends 500/s) and however many subjects they have.
func TestDemoWithoutTerminalIsPlainAndBounded(t *testing.T) {
	const interval = 300 * time.Millisecond
	t.Setenv("CONNECTOR_NATS_LISTEN", freePort(t))
	t.Setenv("CONNECTOR_HTTP_ADDR", freePort(t))

	var out connectortest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- runDemo(ctx, []string{"-totals-every", interval.String()}, &out) }()
	deadline := time.Now().Add(30 * time.Second)
	totals := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d messages \d+ \(\d+/s\)(: .*)?$`)
	full := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d messages \d+ \(\d+/s\): lasersell\.demo \d+ \(\d+/s\), openstream\.arm1 \d+ \(\d+/s\), openstream\.arm2 \d+ \(\d+/s\)$`)
	for len(full.FindAllString(out.String(), -1)) < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 6 lines of totals for the 3 sessions in 30 s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo returned %v", err)
	}
	elapsed := time.Since(start)

	got := out.String()
	if i := strings.IndexByte(got, 0x1b); i >= 0 {
		t.Fatalf("escape code at byte %d of the output:\n%q", i, got[max(0, i-40):min(len(got), i+40)])
	}
	if n := strings.Count(got, "Paste into another terminal"); n != 1 || !strings.HasPrefix(got, "connector demo: ") {
		t.Errorf("the output does not start with the demo's commands, printed once (%d times):\n%s", n, got)
	}
	// Then one line of totals per interval.
	lines := totals.FindAllString(got, -1)
	if len(lines) == 0 || !strings.HasSuffix(got, lines[len(lines)-1]+"\n") {
		t.Fatalf("the output does not end with lines of totals:\n%s", got)
	}
	if limit := int(elapsed/interval) + 1; len(lines) > limit {
		t.Errorf("%d lines of totals in %s: more than one per %s", len(lines), elapsed, interval)
	}
	rest := len(got) - strings.Index(got, lines[0])
	if perLine := rest / len(lines); perLine > 200 {
		t.Errorf("%d bytes per line of totals, want at most 200:\n%s", perLine, got)
	}
	t.Logf("%d bytes in %s; %d lines of totals, the last: %s", len(got), elapsed.Round(time.Millisecond), len(lines), lines[len(lines)-1])
}

// In a terminal the frame clears and redraws the screen, so log lines are
// drawn in it, under the table, frame after frame, instead of being wiped.
func TestSummaryTerminalFrameShowsLatestLogs(t *testing.T) {
	logs := newLogTail(&strings.Builder{}, 3)
	log := newLogger("warn", "console", logs)
	s := &summary{counts: map[string]uint64{"lasersell.demo.exit.w": 5}, last: map[string]uint64{}}
	opts := summaryOptions{Header: "connector demo\n", Interval: time.Second, Terminal: true, Logs: logs}

	log.Warn().Str("reason", "closed_by_peer").Msg("upstream session ended; reconnecting")
	log.Info().Msg("not at warn level")
	for i, frame := range []string{s.frame(opts, time.Now()), s.frame(opts, time.Now())} {
		if !strings.HasPrefix(frame, "\033[H\033[2J"+"connector demo\n") {
			t.Errorf("frame %d does not redraw the screen from the top: %q", i, frame)
		}
		table := strings.Index(frame, "\nall ")
		warning := strings.Index(frame, "upstream session ended; reconnecting")
		if table < 0 || warning < table || !strings.Contains(frame, "reason=closed_by_peer") {
			t.Errorf("frame %d: the warning is not under the table:\n%s", i, frame)
		}
		if strings.Contains(frame, "not at warn level") {
			t.Errorf("frame %d shows a line below LOG_LEVEL", i)
		}
	}

	// More lines than the tail keeps between two frames: the latest are drawn
	// and the frame says how many were not.
	for _, m := range []string{"one", "two", "three", "four", "five"} {
		log.Warn().Msg(m)
	}
	frame := s.frame(opts, time.Now())
	if strings.Contains(frame, "WRN two") || !strings.Contains(frame, "WRN three") || !strings.Contains(frame, "WRN five") ||
		!strings.Contains(frame, "(2 more logged too fast to be shown)") {
		t.Errorf("frame after a burst of warnings:\n%s", frame)
	}
}

// Plain frames are one line of totals per session, without escape codes,
// and are skipped while nothing arrives.
func TestSummaryPlainFrameOnlyOnChange(t *testing.T) {
	s := &summary{counts: map[string]uint64{}, last: map[string]uint64{}}
	opts := summaryOptions{Header: "connector demo\n", Interval: 10 * time.Second}
	at := time.Date(2024, 1, 2, 15, 4, 5, 0, time.UTC)
	if got, want := s.frame(opts, at), "15:04:05 messages 0 (0/s)\n"; got != want {
		t.Errorf("first plain frame %q, want %q (the header is printed before it)", got, want)
	}
	if f := s.frame(opts, at); f != "" {
		t.Errorf("unchanged counts printed again: %q", f)
	}
	s.counts["openstream.arm1.data.joints"] = 5000
	s.counts["openstream.arm1.status"] = 10
	s.counts["lasersell.demo.pnl.17"] = 90
	s.counts["lasersell.demo.pnl.18"] = 10
	want := "15:04:05 messages 5110 (511/s): lasersell.demo 100 (10/s), openstream.arm1 5010 (501/s)\n"
	if got := s.frame(opts, at); got != want {
		t.Errorf("plain frame after 5110 messages in 10 s:\n%q, want\n%q", got, want)
	}
}

// Released, the tail writes the lines no frame showed, then passes through.
func TestLogTailReleaseWritesUnshownLines(t *testing.T) {
	var out strings.Builder
	logs := newLogTail(&out, 4)
	_, _ = logs.Write([]byte("shown\n"))
	logs.show()
	_, _ = logs.Write([]byte("held 1\nheld 2\n"))
	logs.release()
	logs.release()
	_, _ = logs.Write([]byte("after\n"))
	if got, want := out.String(), "held 1\nheld 2\nafter\n"; got != want {
		t.Errorf("written %q, want %q", got, want)
	}

	// Released before any frame (serve failed) after more lines than it keeps.
	out.Reset()
	logs = newLogTail(&out, 1)
	_, _ = logs.Write([]byte("one\ntwo\nthree\n"))
	logs.release()
	if got, want := out.String(), "(2 log lines were logged too fast to be shown)\nthree\n"; got != want {
		t.Errorf("written %q, want %q", got, want)
	}
}
