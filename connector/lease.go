package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// Leases give one replica of a fleet the ownership of an upstream session,
// with the KV bucket CONNECTOR_LEASES as the only arbiter:
//   - Acquire creates the session's key if it is absent (create-if-absent: of
//     any number of candidates exactly one write succeeds); the revision of
//     that write is the lease's epoch, which increases with every new
//     ownership and doubles as a fencing token.
//   - Renew rewrites the key only if its revision is still the one this owner
//     wrote last (a revision-checked update), so nobody can renew a lease it
//     lost, and nobody steals a live lease.
//   - Expiry is the bucket's age limit (the TTL): a key not renewed within it
//     is removed by the server, with a limit marker that watchers see at once
//     (nats-server 2.11 or newer).
//   - Release deletes the key if this owner still holds it, for a handover
//     without waiting for the TTL.
//
// Self-fencing: Lease.ValidUntil is a deadline on the monotonic clock,
// computed from when the last successful write was sent (not when its ack
// came back): the server cannot have started the key's age earlier, so
// before that deadline no other replica can hold the lease. An owner stops
// writing upstream when the deadline passes without a renewal. Go's
// monotonic clock stops while the machine is suspended (a laptop's lid, a
// VM paused by its host) while the server's clock runs on, so Valid also
// checks the same deadline on the boot clock, which counts suspended time
// (boottime.go).
type Leases struct {
	kv      jetstream.KeyValue
	replica string
	ttl     time.Duration
}

// Lease is one session's ownership as its holder sees it.
type Lease struct {
	// Key is the session's key, "<kind>.<name>".
	Key string
	// Replica is the owner's CONNECTOR_REPLICA.
	Replica string
	// Epoch is the revision of the write that acquired the lease.
	Epoch uint64

	mu       sync.Mutex // revision and sent: renewed by the keeper, read by writers' fences
	revision uint64     // of the last write by this owner
	sent     sendStamp  // when that write was sent
	ttl      time.Duration
}

// leaseDoc is the value of a lease key.
type leaseDoc struct {
	Replica string `json:"replica"`
	Epoch   uint64 `json:"epoch"`
	// Acquired and Renewed are wall-clock times for operators.
	Acquired string `json:"acquired,omitempty"`
	Renewed  string `json:"renewed,omitempty"`
}

// ErrLeaseHeld: another replica holds the lease.
var ErrLeaseHeld = errors.New("lease held by another replica")

// ErrLeaseLost: the lease is no longer this replica's (it expired, or another
// replica acquired it since).
var ErrLeaseLost = errors.New("lease lost")

// LeaseHeldError names the holder of a lease Acquire could not take.
type LeaseHeldError struct {
	Key     string
	Replica string
	Epoch   uint64
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("lease %s: held by replica %q (epoch %d)", e.Key, e.Replica, e.Epoch)
}

// Unwrap makes errors.Is(err, ErrLeaseHeld) true.
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// NewLeases returns the leases of replica in kv, a bucket whose age limit
// (TTL) is ttl.
func NewLeases(kv jetstream.KeyValue, replica string, ttl time.Duration) (*Leases, error) {
	switch {
	case kv == nil:
		return nil, errors.New("leases: no KV bucket")
	case replica == "":
		return nil, errors.New("leases: the replica has no name")
	case ttl <= 0:
		return nil, fmt.Errorf("leases: TTL %s must be positive", ttl)
	}
	return &Leases{kv: kv, replica: replica, ttl: ttl}, nil
}

// LeaseBucket is the configuration of the leases bucket for a TTL: keys
// expire after ttl without renewal, and the limit marker that announces the
// expiry is kept as long again.
func LeaseBucket(name string, ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "one owner per upstream session across replicas: <kind>.<session> -> {replica, epoch}",
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: ttl,
		Replicas:       max(replicas, 1),
		Storage:        jetstream.FileStorage,
	}
}

// ErrLeaseTTLMismatch: the leases bucket exists with another age limit than
// this replica's lease TTL. Every replica must use the same TTL (the fencing
// arithmetic relies on it); changing it takes stopping every replica and
// deleting the bucket.
var ErrLeaseTTLMismatch = errors.New("the leases bucket's TTL is not the lease TTL")

// ProvisionLeases creates the leases bucket for ttl, or opens it if it
// exists with that TTL; an existing bucket with another TTL is refused
// (ErrLeaseTTLMismatch), never changed under running replicas.
func ProvisionLeases(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	cfg := LeaseBucket(subjects.BucketLeases, ttl, replicas)
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, placementError(fmt.Errorf("leases bucket %s: %w", cfg.Bucket, err), "", cfg.Bucket, cfg.Replicas)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("leases bucket %s: %w", cfg.Bucket, err)
	}
	if st.TTL() != ttl {
		return nil, fmt.Errorf("leases bucket %s expires leases after %s, this replica's lease TTL is %s: %w", cfg.Bucket, st.TTL(), ttl, ErrLeaseTTLMismatch)
	}
	return kv, nil
}

// Acquire takes the lease of key if no replica holds it. A held lease is
// refused with a *LeaseHeldError naming the holder.
func (l *Leases) Acquire(ctx context.Context, key string) (*Lease, error) {
	sent := stampSend()
	now := sent.mono.UTC().Format(time.RFC3339Nano)
	// The epoch is the revision of this very write, unknown before it: the
	// create carries 0, and the first renewal records the epoch.
	rev, err := l.kv.Create(ctx, key, l.encode(leaseDoc{Replica: l.replica, Acquired: now}))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, l.holder(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: acquire: %w", key, err)
	}
	return l.confirm(ctx, &Lease{Key: key, Replica: l.replica, Epoch: rev, revision: rev, sent: sent, ttl: l.ttl}, now)
}

// confirm records a new lease's epoch in its value at once: a
// revision-checked write, so it is the renewal that also proves the lease is
// still ours.
func (l *Leases) confirm(ctx context.Context, lease *Lease, acquired string) (*Lease, error) {
	written := lease.lastRevision()
	if err := l.renew(ctx, lease, acquired); err != nil {
		// Do not leave a lease nobody uses until its TTL: give it back
		// (only if it is still the one just written).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = l.kv.Delete(dctx, lease.Key, jetstream.LastRevision(written))
		cancel()
		return nil, err
	}
	return lease, nil
}

// Adopt takes over a lease held under this replica's own name by an
// earlier process (the same CONNECTOR_REPLICA restarted after a crash), so
// a restart does not wait out the TTL: a revision-checked rewrite of the key
// as read, whose revision is the new epoch. A lease held by another replica
// is refused with a *LeaseHeldError; a free one is acquired.
//
// Names must be unique among live processes: adopting assumes the earlier
// holder is gone.
func (l *Leases) Adopt(ctx context.Context, key string) (*Lease, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return l.Acquire(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: adopt: %w", key, err)
	}
	var doc leaseDoc
	if json.Unmarshal(e.Value(), &doc) != nil || doc.Replica != l.replica {
		return nil, l.holder(ctx, key)
	}
	sent := stampSend()
	now := sent.mono.UTC().Format(time.RFC3339Nano)
	rev, err := l.kv.Update(ctx, key, l.encode(leaseDoc{Replica: l.replica, Acquired: now}), e.Revision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) || isWrongLastSequence(err) {
		// Changed since it was read (expired, released, taken): compete as usual.
		return l.Acquire(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: adopt: %w", key, err)
	}
	return l.confirm(ctx, &Lease{Key: key, Replica: l.replica, Epoch: rev, revision: rev, sent: sent, ttl: l.ttl}, now)
}

// holder reads who holds key, for a refusal.
func (l *Leases) holder(ctx context.Context, key string) error {
	held := &LeaseHeldError{Key: key}
	if e, err := l.kv.Get(ctx, key); err == nil {
		var doc leaseDoc
		if json.Unmarshal(e.Value(), &doc) == nil {
			held.Replica, held.Epoch = doc.Replica, doc.Epoch
		}
		if held.Epoch == 0 {
			held.Epoch = e.Revision() // between the create and its first renewal
		}
	}
	return held
}

// Renew extends the lease by the TTL, if this replica still holds it;
// otherwise it returns ErrLeaseLost and the lease must not be used again.
func (l *Leases) Renew(ctx context.Context, lease *Lease) error {
	return l.renew(ctx, lease, "")
}

func (l *Leases) renew(ctx context.Context, lease *Lease, acquired string) error {
	sent := stampSend()
	doc := leaseDoc{Replica: l.replica, Epoch: lease.Epoch, Acquired: acquired, Renewed: sent.mono.UTC().Format(time.RFC3339Nano)}
	rev, err := l.kv.Update(ctx, lease.Key, l.encode(doc), lease.lastRevision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSequence(err) {
		if own, ok := l.ownWrite(ctx, lease); ok {
			// An earlier renewal was stored although its ack was lost (an
			// election, a timeout): still ours. The validity stays counted
			// from the last confirmed write; the next renewal extends it.
			lease.mu.Lock()
			lease.revision = own
			lease.mu.Unlock()
			return nil
		}
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) || isWrongLastSequence(err) {
		// Known lost: no longer valid at all (the fences close at once).
		lease.mu.Lock()
		lease.sent = sendStamp{}
		lease.mu.Unlock()
		return fmt.Errorf("lease %s (epoch %d): %w", lease.Key, lease.Epoch, ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("lease %s: renew: %w", lease.Key, err)
	}
	lease.mu.Lock()
	lease.revision, lease.sent = rev, sent
	lease.mu.Unlock()
	return nil
}

// ownWrite returns the key's revision when a write of this owner moved it
// without this owner learning so (its ack was lost): the value still names
// this replica and this lease's epoch, at a later revision. A same-name
// process that adopted the lease wrote another epoch.
func (l *Leases) ownWrite(ctx context.Context, lease *Lease) (uint64, bool) {
	e, err := l.kv.Get(ctx, lease.Key)
	if err != nil {
		return 0, false
	}
	var doc leaseDoc
	if json.Unmarshal(e.Value(), &doc) != nil || doc.Replica != l.replica || doc.Epoch != lease.Epoch || e.Revision() <= lease.lastRevision() {
		return 0, false
	}
	return e.Revision(), true
}

func (lease *Lease) lastRevision() uint64 {
	lease.mu.Lock()
	defer lease.mu.Unlock()
	return lease.revision
}

// Release gives the lease up at once if this replica still holds it, so that
// another replica can acquire it without waiting for the TTL. ErrLeaseLost
// says it was not (or no longer provably) this replica's: it then expires
// after its TTL.
func (l *Leases) Release(ctx context.Context, lease *Lease) error {
	err := l.kv.Delete(ctx, lease.Key, jetstream.LastRevision(lease.lastRevision()))
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSequence(err) {
		if own, ok := l.ownWrite(ctx, lease); ok {
			err = l.kv.Delete(ctx, lease.Key, jetstream.LastRevision(own))
		}
	}
	lease.mu.Lock()
	lease.sent = sendStamp{} // no longer valid, whatever the outcome
	lease.mu.Unlock()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSequence(err):
		// Not ours any more (expired and taken), or a renewal whose ack was
		// lost moved the revision: either way it expires after its TTL.
		return fmt.Errorf("lease %s (epoch %d): release: %w", lease.Key, lease.Epoch, ErrLeaseLost)
	}
	return fmt.Errorf("lease %s: release: %w", lease.Key, err)
}

// ValidUntil is the monotonic deadline before which no other replica can
// hold the lease: the TTL after the last successful write was sent.
func (lease *Lease) ValidUntil() time.Time {
	lease.mu.Lock()
	defer lease.mu.Unlock()
	if lease.sent.mono.IsZero() {
		return time.Time{}
	}
	return lease.sent.mono.Add(lease.ttl)
}

// Valid reports whether the lease is certainly still held at now, with a
// safety margin for the time between the check and its use: on the
// monotonic clock, and on the boot clock where there is one.
func (lease *Lease) Valid(now time.Time, margin time.Duration) bool {
	lease.mu.Lock()
	sent := lease.sent
	lease.mu.Unlock()
	if sent.mono.IsZero() || !now.Add(margin).Before(sent.mono.Add(lease.ttl)) {
		return false
	}
	if boot, ok := bootClock(); ok && sent.boot > 0 {
		return boot+margin < sent.boot+lease.ttl
	}
	return true
}

func (l *Leases) encode(doc leaseDoc) []byte {
	b, _ := json.Marshal(doc) // strings and numbers: cannot fail
	return b
}

// isWrongLastSequence reports a revision-checked write refused because the
// key changed since (the server's "wrong last sequence").
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
