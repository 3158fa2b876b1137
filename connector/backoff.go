package connector

import "time"

// Backoff is a reconnect schedule: Base, doubling per consecutive failure,
// capped at Max, back to the start after Reset. Sources keep one per reconnect
// loop (and one per slower schedule, such as for refused credentials), so an
// upstream that keeps failing is retried less and less often, never faster
// than Max allows, while one that recovers is retried at once again.
//
// It is a value owned by one loop, not safe for concurrent use; the zero
// value of its private state is a fresh schedule.
type Backoff struct {
	// Base is the first delay (the second with Immediate).
	Base time.Duration
	// Max caps every delay.
	Max time.Duration
	// Immediate makes the first retry after a fresh start or a Reset wait
	// nothing: a connection that just dropped is most likely back already,
	// and a gap in the data costs more than one wasted attempt.
	Immediate bool

	failures int // Next calls since the last Reset
}

// Next returns the delay before the next attempt and advances the schedule.
func (b *Backoff) Next() time.Duration {
	n := b.failures
	b.failures++
	if b.Immediate {
		if n == 0 {
			return 0
		}
		n--
	}
	d := b.Base
	// Doubling stops at the cap, so the loop is short and d never overflows.
	for ; n > 0 && d > 0 && d < b.Max; n-- {
		if d > b.Max/2 {
			d = b.Max
			break
		}
		d *= 2
	}
	return max(0, min(d, b.Max))
}

// Reset starts the schedule over: the next delay is the first one again.
func (b *Backoff) Reset() { b.failures = 0 }

// Healthy reports whether a session that became usable at up (the zero time:
// never) lasted at least after. A source resets its Backoff when a session
// that ends was healthy: an upstream that accepts and then drops every
// connection at once keeps backing off, one that worked for a while is
// retried at the start of the schedule.
func Healthy(up time.Time, after time.Duration) bool {
	return !up.IsZero() && time.Since(up) >= after
}
