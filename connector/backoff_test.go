package connector

import (
	"math"
	"slices"
	"testing"
	"time"
)

func nextMS(b *Backoff, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = b.Next().Milliseconds()
	}
	return out
}

func TestBackoffDoublesToMaxAndResets(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	if got, want := nextMS(&b, 8), []int64{100, 200, 400, 800, 1600, 2000, 2000, 2000}; !slices.Equal(got, want) {
		t.Fatalf("schedule %v, want %v", got, want)
	}
	b.Reset()
	if got := b.Next().Milliseconds(); got != 100 {
		t.Fatalf("after Reset: %d ms, want 100", got)
	}
}

func TestBackoffImmediateFirst(t *testing.T) {
	b := Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, Immediate: true}
	if got, want := nextMS(&b, 7), []int64{0, 20, 40, 80, 160, 200, 200}; !slices.Equal(got, want) {
		t.Fatalf("schedule %v, want %v", got, want)
	}
	b.Reset()
	if got := b.Next(); got != 0 {
		t.Fatalf("after Reset: %s, want immediate", got)
	}
}

func TestBackoffEdges(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    Backoff
		want []int64
	}{
		{"base above max", Backoff{Base: 5 * time.Second, Max: time.Second}, []int64{1000, 1000}},
		{"zero", Backoff{}, []int64{0, 0}},
		{"no cap", Backoff{Base: time.Second}, []int64{0, 0}},
		{"non-power-of-two cap", Backoff{Base: 300 * time.Millisecond, Max: time.Second}, []int64{300, 600, 1000, 1000}},
	} {
		if got := nextMS(&tc.b, len(tc.want)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// Thousands of failures near the largest duration neither overflow nor
	// take long.
	huge := Backoff{Base: time.Nanosecond, Max: math.MaxInt64}
	for range 10_000 {
		if d := huge.Next(); d < 0 {
			t.Fatalf("overflowed: %s", d)
		}
	}
	if d := huge.Next(); d != math.MaxInt64 {
		t.Fatalf("capped at %s, want Max", d)
	}
}

func TestHealthy(t *testing.T) {
	if Healthy(time.Time{}, 0) {
		t.Error("a session that never came up is healthy")
	}
	if !Healthy(time.Now().Add(-2*time.Second), time.Second) {
		t.Error("a session up for 2 s is not healthy after 1 s")
	}
	if Healthy(time.Now(), time.Second) {
		t.Error("a session that just came up is healthy")
	}
}
