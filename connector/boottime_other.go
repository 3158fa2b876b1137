//go:build !linux

package connector

import "time"

// bootClock: no boot clock here; the fences use the monotonic clock alone.
func bootClock() (time.Duration, bool) { return 0, false }
