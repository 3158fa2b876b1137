// Package procscale sizes the Go scheduler (GOMAXPROCS) to the CPU the
// process actually uses, between 1 and Go's own default.
//
// The connector's work is many small wake-ups: a reader per upstream
// connection, the publishers, the NATS clients. With more processors (Ps)
// than the work needs, every wake-up also wakes an idle P's thread to look
// for work to steal, and the threads trade goroutines back and forth. On the
// 2-core benchmark machine, shared with nats-server as in a docker-compose
// stack, one P cost 0.84x the CPU per event of two with 50 Open Stream
// robots and 0.90x with the LaserSell flood, at the same throughput and exit
// latency (BENCHMARKS.md, issue 12). A connector of many busy sessions, or
// one embedding its NATS server, needs more: the controller doubles the Ps
// as soon as they are nearly all busy and gives one back after a few quiet
// intervals.
package procscale

// Thresholds of the plan, as fractions of the processors' capacity.
const (
	// busyShare: using at least this share of n Ps means n may be too few
	// (a saturated P reads a little under 1: syscalls run off the P, the
	// sampling interval cuts bursts).
	busyShare = 0.75
	// quietShare: using at most this share of n-1 Ps means one fewer would
	// still have headroom.
	quietShare = 0.5
	// quietIntervals is how many quiet intervals in a row it takes to give
	// one P back: growing is immediate, shrinking is slow, so a bursty load
	// does not make the count oscillate.
	quietIntervals = 3
)

// plan decides the processor count from one interval's CPU use at a time. It
// is pure: the controller feeds it measurements, tests feed it anything.
type plan struct {
	max   int // upper bound, at least 1
	quiet int // quiet intervals in a row so far
}

// next returns the processor count for the next interval, given the current
// count n and the cores the process used over the last one.
func (p *plan) next(n int, used float64) int {
	n = min(max(n, 1), p.max)
	switch {
	case used >= busyShare*float64(n) && n < p.max:
		p.quiet = 0
		return min(2*n, p.max)
	case n > 1 && used <= quietShare*float64(n-1):
		p.quiet++
		if p.quiet >= quietIntervals {
			p.quiet = 0
			return n - 1
		}
		return n
	default:
		p.quiet = 0
		return n
	}
}
