package replay

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Bar renders Progress as one self-overwriting terminal line, at most once per
// interval (and always for the final update, which ends the line).
type Bar struct {
	out      io.Writer
	interval time.Duration
	last     time.Time
	drawn    bool
}

// NewBar returns a bar writing to out (a terminal: it uses '\r' and erase to
// end of line). interval <= 0 means 250ms.
func NewBar(out io.Writer, interval time.Duration) *Bar {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	return &Bar{out: out, interval: interval}
}

// Update is a Progress callback.
func (b *Bar) Update(p Progress) {
	now := time.Now()
	if !p.Final && b.drawn && now.Sub(b.last) < b.interval {
		return
	}
	b.last, b.drawn = now, true
	line := "\r" + FormatProgress(p) + "\x1b[K"
	if p.Final {
		line += "\n"
	}
	_, _ = io.WriteString(b.out, line)
}

const barWidth = 24

// FormatProgress is the bar's text: a gauge, done/total, rate and last sequence.
func FormatProgress(p Progress) string {
	frac := 0.0
	if p.Total > 0 {
		frac = min(float64(p.Done)/float64(p.Total), 1)
	}
	if p.Final && !p.Canceled {
		// Total is counted to the stream's end; a range can finish below it.
		frac = 1
	}
	filled := int(frac * barWidth)
	rate := 0.0
	if s := p.Elapsed.Seconds(); s > 0 {
		rate = float64(p.Done) / s
	}
	return fmt.Sprintf("[%s%s] %d/%d msgs %3.0f%%  %.0f msg/s  seq %d",
		strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled), p.Done, p.Total, frac*100, rate, p.LastSeq)
}
