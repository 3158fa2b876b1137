package connector

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	// Renew is how often a held lease is renewed (default TTL/10). With
	// the default margin an owner rides out a leases-bucket election of up
	// to TTL - Margin - 1.25 x Renew (5/8 of the TTL: 9.4 s at 15 s; one
	// retry interval of Renew/4 after the election): nats-server's election
	// timeouts are 4-9 s. At TTL/4 that was 7.0 s, and one leader kill in a
	// few ended in a self-fence and a restart of the session.
	Renew time.Duration
	// Margin is how long before its lease could expire an owner stops its
	// session if no renewal got through (default TTL/4): the time a stop
	// takes, so the old owner is gone before anyone else can acquire.
	Margin time.Duration
	// Retry is how often a free or foreign lease is tried (default TTL/4);
	// a watch on the bucket wakes the candidates at once when a lease is
	// released or expires.
	Retry time.Duration
	// Members, if set, balances the sessions over the live replicas: each
	// session moves (a graceful handover) to its preferred replica once the
	// membership has settled, and other replicas leave the preferred one a
	// head start on a free lease. Without it, the first replica to try takes
	// a free lease.
	Members *Members
	// Balance is how often an owner checks whether another replica is
	// preferred for a session it runs (default TTL/8).
	Balance time.Duration
	// Metrics, if set, receive the lease series (NewFleetMetrics).
	Metrics *FleetMetrics
	Log     zerolog.Logger
}

// Fleet runs, on one runtime, exactly the sessions whose lease this replica
// holds: each configured session has a keeper that acquires its lease
// (create-if-absent), starts the session, renews the lease, and stops the
// session when the lease is lost or cannot be confirmed in time
// (self-fencing), or releases it at shutdown after stopping the session (a
// handover: the next replica takes it at once).
type Fleet struct {
	rt         *Runtime
	kv         jetstream.KeyValue
	leases     *Leases
	opts       FleetOptions
	sessions   []Session
	settled    chan struct{} // closed when every keeper made its first attempt, or Run ended
	settleOnce sync.Once
	pending    sync.WaitGroup

	mu        sync.Mutex
	wakes     map[string]chan struct{} // per session key: a lease changed
	held      map[string]*Lease
	owners    map[string]Owner  // per session key: the holder last seen in the bucket
	endedBy   map[string]string // per session key: the holder whose lease ended last (released or expired)
	duplicate bool              // another live process uses this replica's name
}

// LeaseView is one configured session's ownership as this replica sees it.
type LeaseView struct {
	Session string `json:"session"` // <kind>.<name>
	Owner          // the holder, if known ("" when free or not seen yet)
	Mine    bool   `json:"mine"` // this replica holds it and runs the session
	// Preferred is the live replica the session should run on when the
	// fleet balances its sessions ("" without balancing), and Settled
	// whether the membership has been stable long enough to move it there.
	Preferred string `json:"preferred,omitempty"`
	Settled   bool   `json:"settled,omitempty"`
}

// NewFleet prepares the keepers of sessions on rt, with the leases in kv.
func NewFleet(rt *Runtime, kv jetstream.KeyValue, sessions []Session, opts FleetOptions) (*Fleet, error) {
	leases, err := NewLeases(kv, opts.Replica, opts.TTL)
	if err != nil {
		return nil, err
	}
	if opts.Renew <= 0 {
		opts.Renew = opts.TTL / 10
	}
	if opts.Margin <= 0 {
		opts.Margin = opts.TTL / 4
	}
	if opts.Retry <= 0 {
		opts.Retry = opts.TTL / 4
	}
	if opts.Balance <= 0 {
		opts.Balance = opts.TTL / 8
	}
	if opts.Renew+opts.Margin >= opts.TTL {
		return nil, fmt.Errorf("fleet: renewal every %s with a %s margin does not fit in the lease TTL %s", opts.Renew, opts.Margin, opts.TTL)
	}
	f := &Fleet{rt: rt, kv: kv, leases: leases, opts: opts, sessions: sessions, settled: make(chan struct{}),
		wakes: map[string]chan struct{}{}, held: map[string]*Lease{}, owners: map[string]Owner{}, endedBy: map[string]string{}}
	for _, s := range sessions {
		f.wakes[s.Key()] = make(chan struct{}, 1)
	}
	f.pending.Add(len(sessions))
	go func() { f.pending.Wait(); f.settleOnce.Do(func() { close(f.settled) }) }()
	return f, nil
}

// Settled is closed once every session's keeper made its first attempt:
// this replica runs each session whose lease it could take at start.
func (f *Fleet) Settled() <-chan struct{} { return f.settled }

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

// Holder is the replica holding key's lease as this replica last saw it:
// itself while it holds it, "" when the lease is free or unknown.
func (f *Fleet) Holder(key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.held[key]; ok {
		return l.Replica
	}
	return f.owners[key].Replica
}

// Leases returns every configured session's ownership, sorted by session.
func (f *Fleet) Leases() []LeaseView {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]LeaseView, 0, len(f.sessions))
	for _, s := range f.sessions {
		key := s.Key()
		v := LeaseView{Session: key, Owner: f.owners[key]}
		v.Preferred, v.Settled = f.preferred(key)
		if l, ok := f.held[key]; ok {
			v.Owner, v.Mine = Owner{Replica: l.Replica, Epoch: l.Epoch}, true
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b LeaseView) int { return strings.Compare(a.Session, b.Session) })
	return out
}

// Run keeps the leases until ctx ends, then stops the sessions it runs and
// releases their leases. It returns once every lease is released.
func (f *Fleet) Run(ctx context.Context) error {
	defer f.settleOnce.Do(func() { close(f.settled) }) // also when it could not start
	// The keepers end with ctx or with the runtime (a source failed and it
	// stopped every session): a keeper waiting for a lease must not go on
	// competing for sessions this process can no longer run.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-f.rt.Closing():
			cancel()
		case <-ctx.Done():
		}
	}()
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
	watching.Go(func() { f.watchLeases(watchCtx) })
	if f.opts.Members != nil {
		// Leaving: the others stop deferring to this replica before its
		// leases are released, so the next owner starts at once.
		watching.Go(func() {
			select {
			case <-ctx.Done():
				f.opts.Members.Leave()
			case <-watchCtx.Done():
			}
		})
	}
	var keepers sync.WaitGroup
	for _, s := range f.sessions {
		keepers.Go(func() { f.keep(ctx, s) })
	}
	keepers.Wait()
	stopWatch()
	watching.Wait()
	return nil
}

// watchLeases follows the bucket: it records each lease's holder (for
// Leases) and wakes the keeper of a session whose lease was released or
// expired (a delete, purge or limit marker), so it tries at once.
func (f *Fleet) watchLeases(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := f.kv.WatchAll(ctx)
		if err != nil {
			// Candidates still try every Retry meanwhile.
			f.opts.Log.Warn().Err(err).Msg("cannot watch the leases; retrying (taking over by polling meanwhile)")
			Sleep(ctx, f.opts.Retry)
			continue
		}
		f.followLeases(ctx, w)
		_ = w.Stop()
	}
}

// followLeases applies one watcher's updates until ctx ends or it stops.
func (f *Fleet) followLeases(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue // the end of the initial values
			}
			var owner Owner
			if e.Operation() == jetstream.KeyValuePut {
				var doc leaseDoc
				if json.Unmarshal(e.Value(), &doc) == nil {
					owner = Owner{Replica: doc.Replica, Epoch: cmp.Or(doc.Epoch, e.Revision())}
				}
			}
			f.mu.Lock()
			if _, configured := f.wakes[e.Key()]; configured {
				if e.Operation() != jetstream.KeyValuePut {
					f.endedBy[e.Key()] = f.owners[e.Key()].Replica
				}
				f.owners[e.Key()] = owner
			}
			wake := f.wakes[e.Key()]
			f.mu.Unlock()
			if wake != nil && e.Operation() != jetstream.KeyValuePut {
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
	log := f.opts.Log.With().Str("session", key).Logger() // the caller's logger names the replica
	first := true
	settle := func() {
		if first {
			first = false
			f.pending.Done()
		}
	}
	defer settle()
	for ctx.Err() == nil {
		if !first && !f.headStart(ctx, key) {
			return
		}
		lease, how, err := f.take(ctx, key)
		if err != nil {
			settle()
			var held *LeaseHeldError
			switch {
			case errors.As(err, &held):
				f.setOwner(key, Owner{Replica: held.Replica, Epoch: held.Epoch})
			case ctx.Err() == nil:
				log.Warn().Err(err).Msg("cannot acquire the lease; retrying")
			}
			f.wait(ctx, key, f.opts.Retry)
			continue
		}
		log.Info().Uint64("epoch", lease.Epoch).Str("how", how).Msg("lease taken; starting the session")
		f.setHeld(key, lease)
		f.metric(func(m *FleetMetrics) {
			m.acquisitions.WithLabelValues(s.Kind, s.Name, how).Inc()
			m.held.WithLabelValues(s.Kind, s.Name).Set(1)
		})
		// The lease is renewed from now on: while the session starts, runs
		// and stops. lost closes when it is lost or cannot be confirmed in
		// time, after lostReason is set.
		holding, stopHolding := context.WithCancel(context.WithoutCancel(ctx))
		lost := make(chan struct{})
		held := make(chan struct{})
		var lostReason error
		go func() {
			defer close(held)
			lostReason = f.hold(holding, lease, lost, log)
		}()
		endHolding := func() { stopHolding(); <-held }

		err = f.rt.StartOwned(ctx, s, Owner{Replica: lease.Replica, Epoch: lease.Epoch}, f.fence(lease))
		settle()
		if err != nil {
			endHolding()
			f.release(s, lease, log)
			if errors.Is(err, ErrClosed) {
				return
			}
			log.Error().Err(err).Msg("could not start the session; its lease is released")
			f.wait(ctx, key, f.opts.Retry)
			continue
		}
		moving := f.watchPreference(holding, key)
		select {
		case <-moving:
			log.Info().Msg("another replica is preferred for this session; handing it over")
		case <-lost:
			// Self-fencing: stop writing upstream now, without waiting for
			// commands in progress.
			if err := f.rt.Abort(key); err != nil && !errors.Is(err, ErrUnknownSession) {
				log.Error().Err(err).Msg("stopping the session")
			}
			endHolding()
			f.lose(ctx, s, lease, lostReason, log)
			continue // compete again: the lease may be free once it expired
		case <-f.rt.Closing():
			// The runtime stopped every session (a source failed): nothing runs here.
		case <-ctx.Done():
		}
		// Handover: stop the session (still renewing), then release. A
		// lease lost meanwhile turns the graceful stop into an abort.
		stopping := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- f.rt.Stop(key) }()
		var stopErr error
		select {
		case stopErr = <-stopped:
		case <-lost:
			_ = f.rt.Abort(key)
			stopErr = <-stopped
		}
		if stopErr != nil && !errors.Is(stopErr, ErrUnknownSession) {
			log.Error().Err(stopErr).Msg("stopping the session")
		}
		endHolding()
		select {
		case <-lost:
			f.lose(ctx, s, lease, lostReason, log) // lost while stopping: nothing to release
		default:
			if f.release(s, lease, log) {
				f.metric(func(m *FleetMetrics) { m.handover.Observe(time.Since(stopping).Seconds()) })
			}
		}
		select {
		case <-f.rt.Closing():
			return
		default:
		}
	}
}

// headStart waits up to Retry while another live replica is preferred for
// key (it tries at once when the lease is released or expires), and ends
// early when that replica leaves. False when ctx ended.
func (f *Fleet) headStart(ctx context.Context, key string) bool {
	deadline := time.Now().Add(f.opts.Retry)
	t := time.NewTicker(max(f.opts.Retry/16, time.Millisecond))
	defer t.Stop()
	for time.Now().Before(deadline) {
		r, _ := f.preferred(key)
		f.mu.Lock()
		ended := f.endedBy[key]
		f.mu.Unlock()
		if r != "" && r == ended {
			// The preferred replica's own lease just ended: it crashed (its
			// membership expires later than its lease), could not keep the
			// session, or is leaving (its departure may not be seen yet).
			// The head start goes to the next preferred replica.
			r, _ = f.opts.Members.PreferredExcept(key, ended)
		}
		if r == "" || r == f.opts.Replica {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return ctx.Err() == nil
}

// preferred is the replica that should own key when the fleet balances its
// sessions (Members), "" when it does not.
func (f *Fleet) preferred(key string) (replica string, settled bool) {
	if f.opts.Members == nil {
		return "", false
	}
	return f.opts.Members.Preferred(key)
}

// watchPreference returns a channel closed when, with a settled membership,
// another live replica is preferred for key: the owner then hands the
// session over. It checks every Balance until ctx ends.
func (f *Fleet) watchPreference(ctx context.Context, key string) <-chan struct{} {
	moving := make(chan struct{})
	if f.opts.Members == nil {
		return moving
	}
	go func() {
		t := time.NewTicker(f.opts.Balance)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if r, settled := f.preferred(key); settled && r != "" && r != f.opts.Replica {
				close(moving)
				return
			}
		}
	}()
	return moving
}

// take acquires the lease of key, or adopts it when it is held under this
// replica's name by an earlier process (a restart with the same
// CONNECTOR_REPLICA does not wait out the TTL); how says which.
func (f *Fleet) take(ctx context.Context, key string) (lease *Lease, how string, err error) {
	f.mu.Lock()
	duplicate := f.duplicate
	f.mu.Unlock()
	if duplicate {
		lease, err = f.leases.Acquire(ctx, key)
		return lease, "acquired", err
	}
	lease, err = f.leases.Acquire(ctx, key)
	var held *LeaseHeldError
	if !errors.As(err, &held) || held.Replica != f.opts.Replica {
		return lease, "acquired", err
	}
	lease, err = f.leases.Adopt(ctx, key)
	return lease, "adopted", err
}

// lose records a lease lost while the session ran. If the new holder has
// this replica's name with another epoch, a second live process uses the
// name: adopting is then switched off for good (each would take the
// other's sessions in turn).
func (f *Fleet) lose(ctx context.Context, s Session, lease *Lease, why error, log zerolog.Logger) {
	f.setHeld(lease.Key, nil)
	reason := "unconfirmed"
	if errors.Is(why, ErrLeaseLost) {
		reason = "lost"
		if held, ok := f.leases.holder(ctx, lease.Key).(*LeaseHeldError); ok &&
			held.Replica == f.opts.Replica && held.Epoch != lease.Epoch {
			f.mu.Lock()
			f.duplicate = true
			f.mu.Unlock()
			log.Error().Uint64("epoch", held.Epoch).Msg("another live process runs with this CONNECTOR_REPLICA name and took the lease; names must be unique (adopting leases is now off)")
		}
	}
	f.metric(func(m *FleetMetrics) {
		m.losses.WithLabelValues(s.Kind, s.Name, reason).Inc()
		m.held.WithLabelValues(s.Kind, s.Name).Set(0)
	})
}

// fence is the session's write and command check: the lease must be
// certainly valid for at least the margin, the same deadline at which the
// keeper stops the session. A process resumed after a pause fails it at
// once, before its keeper has noticed.
func (f *Fleet) fence(lease *Lease) func() error {
	return func() error {
		if lease.Valid(time.Now(), f.opts.Margin) {
			return nil
		}
		f.metric(func(m *FleetMetrics) { m.fenced.Inc() })
		return fmt.Errorf("replica %s cannot confirm its lease (epoch %d) in time", f.opts.Replica, lease.Epoch)
	}
}

func (f *Fleet) metric(update func(*FleetMetrics)) {
	if f.opts.Metrics != nil {
		update(f.opts.Metrics)
	}
}

// hold renews the lease at once and then every Renew until ctx ends. When
// the lease is lost, or cannot be confirmed before its deadline less the
// margin (each renewal is bounded by that deadline), it closes lost and
// returns why: the owner must stop before anyone else can acquire.
func (f *Fleet) hold(ctx context.Context, lease *Lease, lost chan<- struct{}, log zerolog.Logger) error {
	next := time.Duration(0)
	for {
		fence := lease.ValidUntil().Add(-f.opts.Margin)
		wait := min(next, time.Until(fence))
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if !lease.Valid(time.Now(), f.opts.Margin) { // the fence, on both clocks
			log.Error().Time("valid_until", lease.ValidUntil()).Msg("lease not confirmed in time; stopping the session (self-fencing)")
			close(lost)
			return errors.New("lease not confirmed in time")
		}
		rctx, cancel := context.WithDeadline(ctx, fence)
		err := f.leases.Renew(rctx, lease)
		cancel()
		switch {
		case errors.Is(err, ErrLeaseLost):
			log.Error().Err(err).Msg("lease lost; stopping the session")
			close(lost)
			return err
		case err != nil && ctx.Err() == nil:
			log.Warn().Err(err).Time("valid_until", lease.ValidUntil()).Msg("lease renewal failed; retrying until its deadline")
			next = f.opts.Renew / 4 // retry sooner while the deadline nears
		default:
			next = f.opts.Renew
		}
	}
}

// release gives the lease back after its session stopped; true when it was
// released (not left to expire).
func (f *Fleet) release(s Session, lease *Lease, log zerolog.Logger) bool {
	ctx, cancel := context.WithTimeout(context.Background(), f.opts.Renew)
	defer cancel()
	err := f.leases.Release(ctx, lease)
	if err != nil {
		log.Warn().Err(err).Msg("could not release the lease; it expires after its TTL")
	} else {
		log.Info().Uint64("epoch", lease.Epoch).Msg("lease released")
	}
	f.setHeld(lease.Key, nil)
	f.metric(func(m *FleetMetrics) { m.held.WithLabelValues(s.Kind, s.Name).Set(0) })
	return err == nil
}

func (f *Fleet) setOwner(key string, owner Owner) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.owners[key] = owner
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
