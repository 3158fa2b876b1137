package procscale

import "testing"

func TestPlanGrowsAtOnceAndShrinksSlowly(t *testing.T) {
	p := &plan{max: 8}
	steps := []struct {
		used float64
		want int
	}{
		{0.9, 2}, // one P nearly all busy: double
		{1.6, 4}, // two nearly busy: double again
		{3.5, 8}, // and again, up to max
		{7.9, 8}, // at max it stays
		{3.6, 8}, // not quiet: 3.6 > 0.5 x 7
		{3.4, 8}, // quiet 1
		{3.4, 8}, // quiet 2
		{3.4, 7}, // quiet 3: one back
		{2.9, 7}, // quiet 1 at 7
		{5.0, 7}, // busy enough to reset the quiet count, not to grow (5.0 < 0.75 x 7)
		{2.9, 7}, // quiet 1 again
		{2.9, 7}, // quiet 2
		{2.9, 6}, // quiet 3
		{0.0, 6}, // quiet 1
		{4.6, 8}, // 4.6 >= 0.75 x 6: double, capped
	}
	n := p.next(1, 0) // from one P, idle: stays
	if n != 1 {
		t.Fatalf("idle at 1 P: got %d", n)
	}
	for i, s := range steps {
		n = p.next(n, s.used)
		if n != s.want {
			t.Fatalf("step %d (used %.1f): got %d Ps, want %d", i, s.used, n, s.want)
		}
	}
}

func TestPlanKeepsOnePAtTheLoadsMeasured(t *testing.T) {
	// The connector alone used 0.3-0.5 cores at the highest LaserSell rates
	// and with 50 Open Stream robots (BENCHMARKS.md): one P is enough.
	p := &plan{max: 2}
	n := 1
	for range 20 {
		for _, used := range []float64{0.31, 0.48, 0.55, 0.7} {
			if n = p.next(n, used); n != 1 {
				t.Fatalf("used %.2f cores: grew to %d Ps", used, n)
			}
		}
	}
}

func TestPlanOfOneProcessorNeverMoves(t *testing.T) {
	p := &plan{max: 1}
	for _, used := range []float64{0, 0.99, 5} {
		if n := p.next(1, used); n != 1 {
			t.Fatalf("max 1, used %.2f: got %d", used, n)
		}
	}
}

// FuzzPlan checks the plan's invariants on any sequence of measurements:
// the count stays within 1..max, grows only when the Ps were nearly all
// busy and at most to twice as many, and shrinks only by one, only after
// quietIntervals quiet measurements in a row.
func FuzzPlan(f *testing.F) {
	f.Add(uint8(2), []byte{200, 10, 10, 10, 250, 0})
	f.Add(uint8(16), []byte{255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, maxP uint8, uses []byte) {
		p := &plan{max: int(maxP%64) + 1}
		n, quiet := 1, 0
		for _, u := range uses {
			used := float64(u) / 255 * float64(2*p.max) // 0 .. twice the machine
			next := p.next(n, used)
			if next < 1 || next > p.max {
				t.Fatalf("n=%d used=%.2f: %d outside 1..%d", n, used, next, p.max)
			}
			switch {
			case next > n:
				if used < busyShare*float64(n) || next > 2*n {
					t.Fatalf("grew from %d to %d at %.2f cores", n, next, used)
				}
				quiet = 0
			case next < n:
				quiet++
				if next != n-1 || used > quietShare*float64(n-1) || quiet < quietIntervals {
					t.Fatalf("shrank from %d to %d at %.2f cores after %d quiet intervals", n, next, used, quiet)
				}
				quiet = 0
			default:
				if n > 1 && used <= quietShare*float64(n-1) {
					quiet++
				} else {
					quiet = 0
				}
			}
			n = next
		}
	})
}
