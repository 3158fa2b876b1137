package procscale

import (
	"context"
	"os"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// DefaultInterval is how often the controller reads the process's CPU use.
const DefaultInterval = time.Second

// Options configure Run. The zero value is usable.
type Options struct {
	// Max is the most processors the controller sets (default: Go's own
	// GOMAXPROCS at start, the cores or the container's CPU limit; setting
	// the count stops the runtime from following a limit changed later).
	Max int
	// Interval between measurements (default DefaultInterval).
	Interval time.Duration
	// Gauge, if set, shows the current processor count (connector_gomaxprocs).
	Gauge prometheus.Gauge
	Log   zerolog.Logger

	// cpu and set replace the process's CPU clock and runtime.GOMAXPROCS in
	// tests.
	cpu func() (float64, bool)
	set func(int)
}

// fixed reports whether the operator set GOMAXPROCS: the controller then
// leaves the runtime alone.
func fixed() bool { return os.Getenv("GOMAXPROCS") != "" }

// Run starts at one processor and adjusts the count every interval until ctx
// ends, then restores the count it found. It returns at once, changing
// nothing, when GOMAXPROCS is set or the process's CPU time cannot be read
// on this platform.
func Run(ctx context.Context, opts Options) {
	cpu, set := opts.cpu, opts.set
	if cpu == nil {
		cpu = processCPU
	}
	if set == nil {
		set = func(n int) { runtime.GOMAXPROCS(n) }
	}
	initial := runtime.GOMAXPROCS(0)
	if opts.Max <= 0 {
		opts.Max = initial
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	show := func(n int) {
		if opts.Gauge != nil {
			opts.Gauge.Set(float64(n))
		}
	}
	show(initial)
	if fixed() {
		opts.Log.Info().Int("gomaxprocs", initial).Msg("GOMAXPROCS is set: the processor count stays fixed")
		return
	}
	last, ok := cpu()
	if !ok {
		opts.Log.Info().Int("gomaxprocs", initial).Msg("process CPU time unavailable here: keeping Go's processor count")
		return
	}
	p := &plan{max: opts.Max}
	n := 1
	set(n)
	show(n)
	opts.Log.Info().Int("from", n).Int("max", opts.Max).Int64("interval_ms", opts.Interval.Milliseconds()).
		Msg("processor count follows the CPU the connector uses (set GOMAXPROCS to fix it)")
	defer set(initial)
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	at := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			cur, ok := cpu()
			if !ok {
				continue
			}
			used := (cur - last) / now.Sub(at).Seconds()
			last, at = cur, now
			next := p.next(n, used)
			if next == n {
				continue
			}
			opts.Log.Debug().Int("from", n).Int("to", next).Float64("cores_used", used).Msg("processor count changed")
			n = next
			set(n)
			show(n)
		}
	}
}
