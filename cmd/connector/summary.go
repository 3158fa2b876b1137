package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// summaryOptions says how runSummary shows its table.
type summaryOptions struct {
	Header   string        // the demo's commands, shown first
	Interval time.Duration // between frames; the "per s" column averages over it
	// Terminal redraws the per-subject table in place (home + clear screen),
	// with the header and the latest log lines. Otherwise the header is
	// printed once, then a plain line of totals (no escape codes) each
	// interval in which messages arrived.
	Terminal bool
	Logs     *logTail // Terminal only: log lines drawn under the table; nil for none
	// Extra, if set, is drawn under the table (in a terminal) or printed
	// when it changed (otherwise): the demo fleet's owners and replicas.
	Extra func() string
}

// summary counts messages per subject and prints a table each interval: the
// demo's live view of what the connector publishes.
type summary struct {
	mu        sync.Mutex
	counts    map[string]uint64
	last      map[string]uint64
	printed   bool   // a frame was written (plain mode skips unchanged frames after it)
	lastExtra string // plain mode: the Extra text printed last
}

// runSummary subscribes to the given subjects on nc and writes the table to
// out every opts.Interval until ctx ends.
func runSummary(ctx context.Context, nc *nats.Conn, out io.Writer, opts summaryOptions, filters ...string) error {
	s := &summary{counts: map[string]uint64{}, last: map[string]uint64{}}
	for _, f := range filters {
		sub, err := nc.Subscribe(f, func(m *nats.Msg) {
			if strings.Contains(m.Subject, ".cmd.") {
				return // requests, not published events
			}
			s.mu.Lock()
			s.counts[m.Subject]++
			s.mu.Unlock()
		})
		if err != nil {
			return fmt.Errorf("summary subscription %s: %w", f, err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		defer func() { _ = sub.Unsubscribe() }()
	}
	if !opts.Terminal {
		_, _ = io.WriteString(out, opts.Header+"\n")
	}
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			if frame := s.frame(opts, now); frame != "" {
				_, _ = io.WriteString(out, frame)
			}
		}
	}
}

// frame renders what one tick writes: in a terminal the whole screen (header,
// per-subject table, latest log lines); otherwise one plain line of totals per
// session (kind.session), or "" when no message arrived since the last line.
func (s *summary) frame(opts summaryOptions, now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	subjects := make([]string, 0, len(s.counts))
	changed := false
	for k, n := range s.counts {
		subjects = append(subjects, k)
		changed = changed || n != s.last[k]
	}
	var extra string
	if !opts.Terminal && opts.Extra != nil {
		if extra = opts.Extra(); extra != s.lastExtra {
			s.lastExtra, changed = extra, true
		} else {
			extra = ""
		}
	}
	if !opts.Terminal && s.printed && !changed {
		return ""
	}
	s.printed = true
	sort.Strings(subjects)
	perSecond := func(n uint64) float64 { return float64(n) / opts.Interval.Seconds() }
	var total, rate uint64
	var b strings.Builder
	if !opts.Terminal {
		// One line per interval whatever the number of subjects (position
		// ids, wallets): a file or a pipe grows by a bounded amount.
		var sessions []string
		totals, rates := map[string]uint64{}, map[string]uint64{}
		for _, subj := range subjects {
			session := sessionOf(subj)
			if _, seen := totals[session]; !seen {
				sessions = append(sessions, session)
			}
			n := s.counts[subj]
			totals[session] += n
			rates[session] += n - s.last[subj]
			total += n
			rate += n - s.last[subj]
			s.last[subj] = n
		}
		fmt.Fprintf(&b, "%s messages %d (%.0f/s)", now.Format(time.TimeOnly), total, perSecond(rate))
		for i, session := range sessions {
			sep := ", "
			if i == 0 {
				sep = ": "
			}
			fmt.Fprintf(&b, "%s%s %d (%.0f/s)", sep, session, totals[session], perSecond(rates[session]))
		}
		b.WriteString("\n")
		b.WriteString(extra)
		return b.String()
	}
	width := len("subject")
	for _, subj := range subjects {
		width = max(width, len(subj))
	}
	b.WriteString("\033[H\033[2J") // home + clear: redraw in place
	b.WriteString(opts.Header)
	fmt.Fprintf(&b, "\n%-*s %10s %10s\n", width, "subject", "total", "per s")
	for _, subj := range subjects {
		n := s.counts[subj]
		d := n - s.last[subj]
		s.last[subj] = n
		total += n
		rate += d
		fmt.Fprintf(&b, "%-*s %10d %10.0f\n", width, subj, n, perSecond(d))
	}
	fmt.Fprintf(&b, "%-*s %10d %10.0f\n", width, "all", total, perSecond(rate))
	if opts.Extra != nil {
		b.WriteString(opts.Extra())
	}
	if opts.Logs != nil {
		lines, dropped := opts.Logs.show()
		if len(lines) > 0 {
			b.WriteString("\nlatest log lines:\n")
			if dropped > 0 {
				fmt.Fprintf(&b, "(%d more logged too fast to be shown)\n", dropped)
			}
			for _, l := range lines {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// sessionOf is a subject's first two tokens, kind and session: lasersell.demo.
func sessionOf(subject string) string {
	if i := strings.IndexByte(subject, '.'); i >= 0 {
		if j := strings.IndexByte(subject[i+1:], '.'); j >= 0 {
			return subject[:i+1+j]
		}
	}
	return subject
}

// logTail is the demo's log output while the table is redrawn in a terminal:
// clearing the screen would wipe log lines written to the same terminal, so
// it keeps the last few for the table to draw under it instead. release
// writes the lines no frame has shown yet and passes later writes through.
type logTail struct {
	mu      sync.Mutex
	out     io.Writer
	keep    int
	lines   []string
	unshown int    // the last unshown lines were added after the latest frame
	dropped uint64 // lines pushed out of the ring before any frame showed them
	told    uint64 // dropped as of the latest frame, which said so
	passing bool   // released: write straight to out
}

func newLogTail(out io.Writer, keep int) *logTail {
	return &logTail{out: out, keep: keep}
}

// Write takes one or more log lines (zerolog writes one event per call).
func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.passing {
		return l.out.Write(p)
	}
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.lines = append(l.lines, line)
		l.unshown++
		if len(l.lines) > l.keep {
			if l.unshown > l.keep {
				l.dropped++
				l.unshown--
			}
			l.lines = l.lines[1:]
		}
	}
	return len(p), nil
}

// show returns the lines to draw and how many were lost before being drawn.
func (l *logTail) show() ([]string, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unshown, l.told = 0, l.dropped
	return append([]string(nil), l.lines...), l.dropped
}

// release ends the tail: lines no frame showed are written to out, and so is
// everything logged afterwards. Safe to call more than once.
func (l *logTail) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.passing {
		return
	}
	l.passing = true
	if n := l.dropped - l.told; n > 0 {
		fmt.Fprintf(l.out, "(%d log lines were logged too fast to be shown)\n", n)
	}
	for _, line := range l.lines[len(l.lines)-l.unshown:] {
		_, _ = io.WriteString(l.out, line+"\n")
	}
	l.lines, l.unshown = nil, 0
}
