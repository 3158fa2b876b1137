package connector

import (
	"context"
	"time"
)

// Retry calls try until it succeeds, waiting bo's delays between attempts,
// and returns nil; it gives up only when ctx ends, with ctx's error. onError
// (if not nil) hears every failure with the wait before the next attempt, to
// log it or report a status (failures caused by ctx's end are not reported). It is for what only time fixes, such as loading
// a session's state while JetStream is unavailable: nothing is lost by
// waiting, and giving up would leave the session without its state.
func Retry(ctx context.Context, bo Backoff, try func(context.Context) error, onError func(err error, wait time.Duration)) error {
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err() // the failure is the shutdown's, not worth a report
		}
		wait := bo.Next()
		if onError != nil {
			onError(err, wait)
		}
		if !Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// Sleep waits d, or less when ctx ends first; it reports whether d passed
// (a non-positive d passes at once unless ctx has ended).
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
