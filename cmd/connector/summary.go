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

// summary counts messages per subject and prints a table once a second: the
// demo's live view of what the connector publishes.
type summary struct {
	mu     sync.Mutex
	counts map[string]uint64
	last   map[string]uint64
}

// runSummary subscribes to the given subjects on nc and redraws the table on out
// every interval until ctx ends.
func runSummary(ctx context.Context, nc *nats.Conn, out io.Writer, header string, interval time.Duration, filters ...string) error {
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
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.draw(out, header, interval)
		}
	}
}

func (s *summary) draw(out io.Writer, header string, interval time.Duration) {
	s.mu.Lock()
	subjects := make([]string, 0, len(s.counts))
	for k := range s.counts {
		subjects = append(subjects, k)
	}
	sort.Strings(subjects)
	width := len("subject")
	for _, subj := range subjects {
		width = max(width, len(subj))
	}
	var b strings.Builder
	b.WriteString("\033[H\033[2J") // home + clear: redraw in place
	b.WriteString(header)
	fmt.Fprintf(&b, "\n%-*s %10s %10s\n", width, "subject", "total", "per s")
	var total, rate uint64
	for _, subj := range subjects {
		n := s.counts[subj]
		d := n - s.last[subj]
		s.last[subj] = n
		total += n
		rate += d
		fmt.Fprintf(&b, "%-*s %10d %10.0f\n", width, subj, n, float64(d)/interval.Seconds())
	}
	fmt.Fprintf(&b, "%-*s %10d %10.0f\n", width, "all", total, float64(rate)/interval.Seconds())
	s.mu.Unlock()
	_, _ = io.WriteString(out, b.String())
}
