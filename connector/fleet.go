package connector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// FleetOptions configure a Fleet.
type FleetOptions struct {
	// Replica names this replica (CONNECTOR_REPLICA): unique in the fleet.
	Replica string
	// TTL is the lease lifetime (CONNECTOR_LEASE_TTL); the leases bucket
	// must have it as its age limit (LeaseBucket).
	TTL time.Duration
	// Renew is how often a held lease is renewed (default TTL/4).
	Renew time.Duration
	// Margin is how long before its lease could expire an owner stops its
	// session if no renewal got through (default TTL/4): the time a stop
	// takes, so the old owner is gone before anyone else can acquire.
	Margin time.Duration
	// Retry is how often a free or foreign lease is tried (default TTL/4);
	// a watch on the bucket wakes the candidates at once when a lease is
	// released or expires.
	Retry time.Duration
	Log   zerolog.Logger
}

// Fleet runs, on one runtime, exactly the sessions whose lease this replica
// holds: each configured session has a keeper that acquires its lease
// (create-if-absent), starts the session, renews the lease, and stops the
// session when the lease is lost or cannot be confirmed in time
// (self-fencing), or releases it at shutdown after stopping the session (a
// handover: the next replica takes it at once).
type Fleet struct {
	rt       *Runtime
	kv       jetstream.KeyValue
	leases   *Leases
	opts     FleetOptions
	sessions []Session

	mu    sync.Mutex
	wakes map[string]chan struct{} // per session key: a lease changed
	held  map[string]*Lease
}

// NewFleet prepares the keepers of sessions on rt, with the leases in kv.
func NewFleet(rt *Runtime, kv jetstream.KeyValue, sessions []Session, opts FleetOptions) (*Fleet, error) {
	leases, err := NewLeases(kv, opts.Replica, opts.TTL)
	if err != nil {
		return nil, err
	}
	if opts.Renew <= 0 {
		opts.Renew = opts.TTL / 4
	}
	if opts.Margin <= 0 {
		opts.Margin = opts.TTL / 4
	}
	if opts.Retry <= 0 {
		opts.Retry = opts.TTL / 4
	}
	if opts.Renew+opts.Margin >= opts.TTL {
		return nil, fmt.Errorf("fleet: renewal every %s with a %s margin does not fit in the lease TTL %s", opts.Renew, opts.Margin, opts.TTL)
	}
	f := &Fleet{rt: rt, kv: kv, leases: leases, opts: opts, sessions: sessions,
		wakes: map[string]chan struct{}{}, held: map[string]*Lease{}}
	for _, s := range sessions {
		f.wakes[s.Key()] = make(chan struct{}, 1)
	}
	return f, nil
}

// Held returns the owner and epoch of the lease this replica holds for key,
// if any.
func (f *Fleet) Held(key string) (replica string, epoch uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.held[key]
	if !ok {
		return "", 0, false
	}
	return l.Replica, l.Epoch, true
}

// Run keeps the leases until ctx ends, then stops the sessions it runs and
// releases their leases. It returns once every lease is released.
func (f *Fleet) Run(ctx context.Context) error {
	st, err := f.kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("fleet: leases bucket: %w", err)
	}
	if st.TTL() != f.opts.TTL {
		// The fencing arithmetic assumes the server expires leases after TTL.
		return fmt.Errorf("fleet: the leases bucket %s expires keys after %s, not the lease TTL %s", st.Bucket(), st.TTL(), f.opts.TTL)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Go(func() { f.forwardReleases(watchCtx) })
	var keepers sync.WaitGroup
	for _, s := range f.sessions {
		keepers.Go(func() { f.keep(ctx, s) })
	}
	keepers.Wait()
	stopWatch()
	watching.Wait()
	return nil
}

// forwardReleases wakes the keeper of a session whose lease was released or
// expired (a delete, purge or limit marker), so it tries at once.
func (f *Fleet) forwardReleases(ctx context.Context) {
	w, err := f.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		// Candidates still try every Retry.
		f.opts.Log.Warn().Err(err).Msg("cannot watch the leases; taking over by polling only")
		return
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil || e.Operation() == jetstream.KeyValuePut {
				continue
			}
			f.mu.Lock()
			wake := f.wakes[e.Key()]
			f.mu.Unlock()
			if wake != nil {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}
}

// keep is one session's keeper: acquire, start, renew; stop when lost.
func (f *Fleet) keep(ctx context.Context, s Session) {
	key := s.Key()
	log := f.opts.Log.With().Str("session", key).Str("replica", f.opts.Replica).Logger()
	for ctx.Err() == nil {
		lease, err := f.leases.Acquire(ctx, key)
		if err != nil {
			if !errors.Is(err, ErrLeaseHeld) && ctx.Err() == nil {
				log.Warn().Err(err).Msg("cannot acquire the lease; retrying")
			}
			f.wait(ctx, key, f.opts.Retry)
			continue
		}
		log.Info().Uint64("epoch", lease.Epoch).Msg("lease acquired; starting the session")
		f.setHeld(key, lease)
		// The lease is renewed from now on: while the session starts, runs
		// and stops. lost closes when it is lost or cannot be confirmed in time.
		holding, stopHolding := context.WithCancel(context.WithoutCancel(ctx))
		lost := make(chan struct{})
		held := make(chan struct{})
		go func() {
			defer close(held)
			f.hold(holding, lease, lost, log)
		}()
		endHolding := func() { stopHolding(); <-held }

		if err := f.rt.Start(ctx, s); err != nil {
			endHolding()
			f.release(lease, log)
			if errors.Is(err, ErrClosed) {
				return
			}
			log.Error().Err(err).Msg("could not start the session; its lease is released")
			f.wait(ctx, key, f.opts.Retry)
			continue
		}
		select {
		case <-lost:
			// Self-fencing: stop writing upstream now, without waiting for
			// commands in progress.
			if err := f.rt.Abort(key); err != nil && !errors.Is(err, ErrUnknownSession) {
				log.Error().Err(err).Msg("stopping the session")
			}
			endHolding()
			f.setHeld(key, nil)
			continue // compete again: the lease may be free once it expired
		case <-f.rt.Closing():
			// The runtime stopped every session (a source failed): nothing runs here.
		case <-ctx.Done():
		}
		// Handover: stop the session (still renewing), then release.
		if err := f.rt.Stop(key); err != nil && !errors.Is(err, ErrUnknownSession) {
			log.Error().Err(err).Msg("stopping the session")
		}
		endHolding()
		select {
		case <-lost:
			f.setHeld(key, nil) // lost while stopping: nothing to release
		default:
			f.release(lease, log)
		}
		select {
		case <-f.rt.Closing():
			return
		default:
		}
	}
}

// hold renews the lease at once and then every Renew until ctx ends. When
// the lease is lost, or cannot be confirmed before its deadline less the
// margin (each renewal is bounded by that deadline), it closes lost and
// returns: the owner must stop before anyone else can acquire.
func (f *Fleet) hold(ctx context.Context, lease *Lease, lost chan<- struct{}, log zerolog.Logger) {
	next := time.Duration(0)
	for {
		fence := lease.ValidUntil().Add(-f.opts.Margin)
		wait := min(next, time.Until(fence))
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !time.Now().Before(fence) {
			log.Error().Time("valid_until", lease.ValidUntil()).Msg("lease not confirmed in time; stopping the session (self-fencing)")
			close(lost)
			return
		}
		rctx, cancel := context.WithDeadline(ctx, fence)
		err := f.leases.Renew(rctx, lease)
		cancel()
		switch {
		case errors.Is(err, ErrLeaseLost):
			log.Error().Err(err).Msg("lease lost; stopping the session")
			close(lost)
			return
		case err != nil && ctx.Err() == nil:
			log.Warn().Err(err).Time("valid_until", lease.ValidUntil()).Msg("lease renewal failed; retrying until its deadline")
			next = f.opts.Renew / 4 // retry sooner while the deadline nears
		default:
			next = f.opts.Renew
		}
	}
}

func (f *Fleet) release(lease *Lease, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), f.opts.Renew)
	defer cancel()
	if err := f.leases.Release(ctx, lease); err != nil {
		log.Warn().Err(err).Msg("could not release the lease; it expires after its TTL")
	} else {
		log.Info().Uint64("epoch", lease.Epoch).Msg("lease released")
	}
	f.setHeld(lease.Key, nil)
}

func (f *Fleet) setHeld(key string, lease *Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lease == nil {
		delete(f.held, key)
		return
	}
	f.held[key] = lease
}

// wait sleeps up to d, or until the session's lease changes, or ctx ends.
func (f *Fleet) wait(ctx context.Context, key string, d time.Duration) {
	f.mu.Lock()
	wake := f.wakes[key]
	f.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}
