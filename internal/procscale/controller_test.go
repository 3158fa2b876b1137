package procscale

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// load is a fake process CPU clock: it advances by cores x wall time, so the
// controller measures exactly the load a test sets, whatever the timer jitter.
type load struct {
	mu    sync.Mutex
	cores float64
	cpu   float64
	at    time.Time
}

func (l *load) set(cores float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advanceLocked()
	l.cores = cores
}

func (l *load) read() (float64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advanceLocked()
	return l.cpu, true
}

func (l *load) advanceLocked() {
	now := time.Now()
	if !l.at.IsZero() {
		l.cpu += l.cores * now.Sub(l.at).Seconds()
	}
	l.at = now
}

// procsLog records every count the controller sets.
type procsLog struct {
	mu  sync.Mutex
	got []int
}

func (p *procsLog) set(n int) {
	p.mu.Lock()
	p.got = append(p.got, n)
	p.mu.Unlock()
}

func (p *procsLog) last() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.got) == 0 {
		return 0
	}
	return p.got[len(p.got)-1]
}

func waitProcs(t *testing.T, p *procsLog, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.last() != want {
		if time.Now().After(deadline) {
			p.mu.Lock()
			defer p.mu.Unlock()
			t.Fatalf("processor count never reached %d; set so far: %v", want, p.got)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestControllerFollowsTheLoad(t *testing.T) {
	l := &load{}
	var procs procsLog
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "connector_gomaxprocs"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Options{Max: 4, Interval: 5 * time.Millisecond, Gauge: gauge, Log: zerolog.Nop(), cpu: l.read, set: procs.set})
	}()
	waitProcs(t, &procs, 1) // it starts at one
	l.set(1.8)              // nearly two cores: 1, then 2, then 4 (1.8 >= 0.75 x 2)
	waitProcs(t, &procs, 4)
	var m dto.Metric
	if err := gauge.Write(&m); err != nil || m.GetGauge().GetValue() != 4 {
		t.Fatalf("gauge %v (%v), want 4", m.GetGauge().GetValue(), err)
	}
	l.set(0.2) // quiet: back down one at a time
	waitProcs(t, &procs, 1)
	cancel()
	<-done
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if want := runtime.GOMAXPROCS(0); procs.got[len(procs.got)-1] != want {
		t.Fatalf("after the stop the count is %d, want the %d it found; set: %v", procs.got[len(procs.got)-1], want, procs.got)
	}
	// Up by doubling, down by one: 1 2 4 3 2 1, then the restore.
	wantSeq := []int{1, 2, 4, 3, 2, 1}
	for i, n := range wantSeq {
		if i >= len(procs.got) || procs.got[i] != n {
			t.Fatalf("counts set %v, want %v then the restore", procs.got, wantSeq)
		}
	}
}

func TestControllerSetsTheRuntime(t *testing.T) {
	initial := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Options{Interval: 10 * time.Millisecond, Log: zerolog.Nop()})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS is %d, want 1 for an idle process", runtime.GOMAXPROCS(0))
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != initial {
		t.Fatalf("GOMAXPROCS %d after the stop, want %d restored", got, initial)
	}
}

func TestControllerLeavesAFixedCountAlone(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	var procs procsLog
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	Run(ctx, Options{Interval: time.Millisecond, Log: zerolog.Nop(), cpu: (&load{cores: 5}).read, set: procs.set})
	if len(procs.got) != 0 {
		t.Fatalf("GOMAXPROCS set by the operator, yet the controller set %v", procs.got)
	}
}

func TestProcessCPUAdvancesWithWork(t *testing.T) {
	a, ok := processCPU()
	if !ok {
		if runtime.GOOS == "windows" || runtime.GOOS == "plan9" || runtime.GOOS == "js" || runtime.GOOS == "wasip1" {
			return // not measured there: Run keeps Go's default (TestControllerKeepsDefaultWithoutAClock)
		}
		t.Fatal("process CPU time unavailable on a unix system")
	}
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		x++
	}
	b, _ := processCPU()
	if b-a < 0.01 {
		t.Fatalf("50 ms of spinning advanced the process CPU clock by %.4f s (x=%d)", b-a, x)
	}
}

func TestControllerKeepsDefaultWithoutAClock(t *testing.T) {
	var procs procsLog
	Run(context.Background(), Options{Log: zerolog.Nop(), cpu: func() (float64, bool) { return 0, false }, set: procs.set})
	if len(procs.got) != 0 {
		t.Fatalf("no CPU clock, yet the controller set %v", procs.got)
	}
}
