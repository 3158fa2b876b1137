package lasersell

import "time"

// Backoff is the SDKs' reconnect schedule: Base, doubling per failed attempt,
// capped at Max, back to Base after Reset (a healthy session). It is a value
// owned by one reconnect loop, not safe for concurrent use.
type Backoff struct {
	Base, Max time.Duration
	next      time.Duration
}

// Next returns the delay before the next attempt and advances the schedule.
func (b *Backoff) Next() time.Duration {
	if b.next <= 0 {
		b.next = b.Base
	}
	d := min(b.next, b.Max)
	// Stop doubling at the cap so the value can never overflow.
	if b.next < b.Max {
		b.next *= 2
	}
	return d
}

// Reset starts the schedule over at Base.
func (b *Backoff) Reset() { b.next = 0 }
