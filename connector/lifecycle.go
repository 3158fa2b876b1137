package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jetbridge/connector/subjects"
)

// running is one started session: its host, its source, the command service
// that serves it, and the goroutine running the source.
type running struct {
	spec   Session
	host   *Host
	src    Source
	served *servedSession
	// cancel ends the source's Run and the command handlers' context.
	cancel context.CancelFunc
	done   chan struct{} // closed when the source's Run returned
	once   sync.Once     // stopSession runs once
	// started is closed when Start has finished with the session, aborted
	// set (before) when it failed and released everything itself.
	started  chan struct{}
	aborted  bool
	ready    bool // under r.mu: Start returned nil (its commands are served)
	stopping bool // under r.mu: its stop began (new commands: shutting_down)
}

// ErrUnknownSession is returned by Stop for a session that is not running.
var ErrUnknownSession = errors.New("no such session")

// ErrClosed is returned by Start once the runtime is shutting down or closed.
var ErrClosed = errors.New("the runtime is closed")

// Start starts one session while the others run: it builds the session's
// host (lanes, publishers, status writer), opens its source on it, serves its
// commands on <kind>.<name>.cmd.<command> and runs the source. When Start
// returns nil the commands are served. The session runs until Stop, the end
// of Run, or Close; ctx gives it its values, not its lifetime.
func (r *Runtime) Start(ctx context.Context, spec Session) error {
	return r.StartOwned(ctx, spec, Owner{}, nil)
}

// StartOwned is Start for a session this replica owns under a lease: its
// status documents and /status name the owner and the lease's epoch, and
// fence (if set) is asked before every command is forwarded and, through
// Host.Fence, before the source writes upstream: an error means the
// ownership is no longer certain and nothing may be written.
func (r *Runtime) StartOwned(ctx context.Context, spec Session, owner Owner, fence func() error) error {
	if err := spec.validate(); err != nil {
		return err
	}
	if !slices.ContainsFunc(r.opts.Kinds, func(k subjects.Kind) bool { return k.Name == spec.Kind }) {
		return fmt.Errorf("session %s: kind %q is not one of the runtime's kinds (its streams are not provisioned)", spec.Key(), spec.Kind)
	}
	key := spec.Key()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &running{spec: spec, cancel: cancel, done: make(chan struct{}), started: make(chan struct{})}
	defer close(s.started)
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		cancel()
		return fmt.Errorf("session %s: %w", key, ErrClosed)
	case r.sessions[key] != nil:
		r.mu.Unlock()
		cancel()
		return fmt.Errorf("session %s is configured twice (or still stopping)", key)
	}
	s.host = r.newHost(spec)
	s.host.owner, s.host.fence = owner, fence
	if owner.Epoch > 0 {
		s.host.epochHdr = []string{strconv.FormatUint(owner.Epoch, 10)}
	}
	r.sessions[key] = s
	r.mu.Unlock()

	src, err := spec.Open(s.host)
	if err != nil {
		r.abortStart(s)
		return fmt.Errorf("session %s: %w", key, err)
	}
	s.src = src
	if err := r.serveKind(sctx, spec.Kind); err != nil {
		r.abortStart(s)
		return err
	}
	served, err := r.serveCommands(sctx, s.host, src)
	if err != nil {
		r.abortStart(s)
		return err
	}
	r.mu.Lock()
	s.served = served // from now on the kind's subscription sees the session
	r.mu.Unlock()
	// The server must know the subscriptions before Start says they are served.
	if err := r.opts.HighConn.FlushTimeout(5 * time.Second); err != nil {
		s.host.log.Warn().Err(err).Msg("command subscriptions not confirmed by the server yet")
	}
	r.mu.Lock()
	s.ready = true
	r.mu.Unlock()
	go func() {
		defer close(s.done)
		if err := src.Run(sctx); err != nil && sctx.Err() == nil {
			s.host.log.Error().Err(err).Msg("source failed")
			r.fail(fmt.Errorf("%s: %w", key, err))
		}
	}()
	return nil
}

// abortStart releases a session whose start failed before its source ran.
func (r *Runtime) abortStart(s *running) {
	s.aborted = true
	s.cancel()
	close(s.done)
	r.releaseHost(s.host)
	r.forget(s)
}

// Stop stops one session while the others run, in the order shutdown uses:
// new commands are refused (shutting_down) and those in progress finish (they
// may need the source); the source stops; its command service stops; its
// lanes drain into JetStream (bounded by DrainTimeout); its final status is
// written to KV. It then releases everything the session held. Stop returns
// ErrUnknownSession for a key that is not running.
func (r *Runtime) Stop(key string) error {
	r.mu.Lock()
	s := r.sessions[key]
	r.mu.Unlock()
	if s == nil {
		return fmt.Errorf("stop %s: %w", key, ErrUnknownSession)
	}
	r.stopSession(s)
	return nil
}

// Abort stops one session at once: its source and the commands in progress
// are cancelled first, without waiting for them (an owner that lost its
// lease must stop writing upstream now); the rest is as Stop.
func (r *Runtime) Abort(key string) error {
	r.mu.Lock()
	s := r.sessions[key]
	r.mu.Unlock()
	if s == nil {
		return fmt.Errorf("abort %s: %w", key, ErrUnknownSession)
	}
	// Also when a graceful stop is under way (it holds the once): the
	// source and the commands it waits for end now.
	s.cancel()
	r.stopSessionNow(s, true)
	return nil
}

// stopSession stops s (once; concurrent callers wait for the first).
func (r *Runtime) stopSession(s *running) { r.stopSessionNow(s, false) }

// stopSessionNow stops s; at once cancels the source and the commands in
// progress before waiting for them.
func (r *Runtime) stopSessionNow(s *running, atOnce bool) {
	s.once.Do(func() {
		<-s.started // a shutdown may find a session still starting
		if s.aborted {
			return // Start released it
		}
		r.mu.Lock()
		s.ready, s.stopping = false, true
		r.mu.Unlock()
		if atOnce {
			s.cancel()
		}
		served := s.served
		if served != nil {
			served.refuse()
		}
		s.cancel()
		select {
		case <-s.done:
		case <-time.After(r.opts.DrainTimeout):
			// A source blocked on a full high lane (NATS down) cannot finish:
			// closing the lanes makes its Emit fail so it can return.
			s.host.log.Error().Dur("timeout_ms", r.opts.DrainTimeout).Msg("source did not stop in time; closing its lanes")
			s.host.closeLanes()
			<-s.done
		}
		if served != nil {
			served.stop(r.opts.CommandTimeout)
		}
		r.releaseHost(s.host)
		r.forget(s)
	})
}

// forget removes a stopped session from the runtime.
func (r *Runtime) forget(s *running) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.spec.Key()] == s {
		delete(r.sessions, s.spec.Key())
	}
}

// session returns the running session kind.name, if its commands are served.
func (r *Runtime) session(kind, name string) *running {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[subjects.SessionKey(kind, name)]
	if s == nil || s.served == nil {
		return nil
	}
	return s
}

// sessionNames lists the names of the kind's sessions whose commands are served.
func (r *Runtime) sessionNames(kind string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for _, s := range r.sessions {
		if s.spec.Kind == kind && s.served != nil {
			names = append(names, s.spec.Name)
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// Running lists the keys of the sessions running (started, their commands
// served, not stopping yet), sorted.
func (r *Runtime) Running() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.sessions))
	for k, s := range r.sessions {
		if s.ready {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
