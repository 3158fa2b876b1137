package connector

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// Members is a fleet's membership: every replica keeps a key named after
// itself in the CONNECTOR_REPLICAS bucket, rewritten at each heartbeat and
// expiring after the lease TTL without one, and deleted when the replica
// leaves. All replicas watch the bucket, so they share one view of who is
// live, from which each session's preferred owner follows by rendezvous
// hashing among the replicas configured for it: a replica joining or
// leaving moves only the sessions whose highest score it gains or had, and a
// replica not configured for a session (a rolling change of configuration)
// is never preferred for it.
type Members struct {
	kv     jetstream.KeyValue
	self   string
	every  time.Duration
	settle time.Duration
	log    zerolog.Logger

	sessions []string // the session keys this replica is configured for

	beat sync.Mutex // a heartbeat and Leave never interleave
	left bool       // under beat: Leave ran, no more heartbeats

	mu      sync.Mutex
	live    map[string]map[string]bool // replica -> the session keys it is configured for
	changed time.Time                  // when live last changed (monotonic)
}

// memberDoc is the value of a replica's key.
type memberDoc struct {
	Replica  string   `json:"replica"`
	Started  string   `json:"started"`
	Host     string   `json:"host,omitempty"` // for operators: where the replica runs
	PID      int      `json:"pid,omitempty"`
	Sessions []string `json:"sessions"`
}

// MembersOptions configure Members.
type MembersOptions struct {
	// Replica names this replica (CONNECTOR_REPLICA).
	Replica string
	// Sessions are the keys (<kind>.<name>) of the sessions this replica is
	// configured for.
	Sessions []string
	// Heartbeat is how often the replica rewrites its key; it must be well
	// under the bucket's TTL (default: a quarter of it).
	Heartbeat time.Duration
	// Settle is how long the membership must stay unchanged before sessions
	// move to their preferred owner: a rolling restart does not move them
	// back and forth.
	Settle time.Duration
	Log    zerolog.Logger
}

// MembersBucket is the configuration of the membership bucket for a TTL.
func MembersBucket(ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         subjects.BucketReplicas,
		Description:    "the fleet's live replicas: <replica> -> {replica, started, host, pid, sessions}, renewed by heartbeats",
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: ttl,
		Replicas:       max(replicas, 1),
		Storage:        jetstream.FileStorage,
	}
}

// ProvisionMembers creates or updates the membership bucket for ttl.
func ProvisionMembers(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	cfg := MembersBucket(ttl, replicas)
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, placementError(fmt.Errorf("fleet membership bucket %s: %w", cfg.Bucket, err), "", cfg.Bucket, cfg.Replicas)
	}
	return kv, nil
}

// NewMembers prepares the membership of opts.Replica in kv.
func NewMembers(kv jetstream.KeyValue, opts MembersOptions) (*Members, error) {
	switch {
	case kv == nil:
		return nil, errors.New("members: no KV bucket")
	case opts.Replica == "":
		return nil, errors.New("members: the replica has no name")
	case opts.Heartbeat <= 0 || opts.Settle < 0:
		return nil, fmt.Errorf("members: heartbeat %s must be positive and settle %s not negative", opts.Heartbeat, opts.Settle)
	}
	return &Members{kv: kv, self: opts.Replica, every: opts.Heartbeat, settle: opts.Settle, log: opts.Log,
		sessions: slices.Sorted(slices.Values(opts.Sessions)), live: map[string]map[string]bool{}, changed: time.Now()}, nil
}

// Run announces the replica and follows the others until ctx ends; then it
// deletes its key, so the others see it leave at once.
func (m *Members) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { m.watch(ctx) })
	host, _ := os.Hostname()
	doc, _ := json.Marshal(memberDoc{Replica: m.self, Started: time.Now().UTC().Format(time.RFC3339Nano),
		Host: host, PID: os.Getpid(), Sessions: m.sessions})
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		m.heartbeat(ctx, doc)
		select {
		case <-ctx.Done():
			m.Leave()
			wg.Wait()
			return
		case <-t.C:
		}
	}
}

// Leave deletes this replica's key, so the others see it leave at once (a
// fleet calls it when it starts handing its sessions over); no heartbeat
// follows. Run ends with a Leave too.
func (m *Members) Leave() {
	m.beat.Lock()
	defer m.beat.Unlock()
	if m.left {
		return
	}
	m.left = true
	ctx, cancel := context.WithTimeout(context.Background(), m.every)
	defer cancel()
	if err := m.kv.Delete(ctx, m.self); err != nil {
		m.log.Warn().Err(err).Msg("could not leave the fleet membership; it expires after the TTL")
	}
}

// heartbeat rewrites the replica's key, unless it left.
func (m *Members) heartbeat(ctx context.Context, doc []byte) {
	m.beat.Lock()
	defer m.beat.Unlock()
	if m.left {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, m.every)
	defer cancel()
	if _, err := m.kv.Put(pctx, m.self, doc); err != nil && ctx.Err() == nil {
		m.log.Warn().Err(err).Msg("fleet membership heartbeat failed; retrying")
	}
}

// watch follows the bucket into m.live.
func (m *Members) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := m.kv.WatchAll(ctx)
		if err != nil {
			m.log.Warn().Err(err).Msg("cannot watch the fleet membership; retrying")
			Sleep(ctx, m.every)
			continue
		}
		m.follow(ctx, w)
		_ = w.Stop()
	}
}

// follow applies the watcher's updates until ctx ends or the watcher stops.
// The initial values replace the whole view (a re-watch after a lost
// connection forgets replicas that left meanwhile).
func (m *Members) follow(ctx context.Context, w jetstream.KeyWatcher) {
	initial := map[string]map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return
			case e == nil: // the end of the initial values
				m.replace(initial)
				initial = nil
			case initial != nil:
				if e.Operation() == jetstream.KeyValuePut {
					initial[e.Key()] = configuredIn(e.Value())
				} else {
					delete(initial, e.Key()) // left while the snapshot was read
				}
			default:
				var sessions map[string]bool
				if e.Operation() == jetstream.KeyValuePut {
					sessions = configuredIn(e.Value())
				}
				m.set(e.Key(), sessions)
			}
		}
	}
}

// configuredIn reads the sessions of a member's value (none if unreadable).
func configuredIn(value []byte) map[string]bool {
	var doc memberDoc
	_ = json.Unmarshal(value, &doc)
	out := make(map[string]bool, len(doc.Sessions))
	for _, k := range doc.Sessions {
		out[k] = true
	}
	return out
}

func (m *Members) replace(live map[string]map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if maps.EqualFunc(live, m.live, maps.Equal) {
		return
	}
	m.live, m.changed = live, time.Now()
	m.log.Info().Int("replicas", len(m.live)).Msg("fleet membership read")
}

// set records a replica's heartbeat (sessions) or its departure (nil).
func (m *Members) set(replica string, sessions map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, was := m.live[replica]
	live := sessions != nil
	if was == live && maps.Equal(old, sessions) {
		return // a heartbeat
	}
	if live {
		m.live[replica] = sessions
	} else {
		delete(m.live, replica)
	}
	m.changed = time.Now()
	m.log.Info().Str("member", replica).Bool("live", live).Int("replicas", len(m.live)).Msg("fleet membership changed")
}

// Live lists the live replicas, sorted.
func (m *Members) Live() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.live))
	for r := range m.live {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// Preferred is the live replica that should own session key (rendezvous
// hashing: the highest score of key and replica), and whether the
// membership has been unchanged for the settle delay. "" while no replica
// is known.
func (m *Members) Preferred(key string) (replica string, settled bool) {
	return m.PreferredExcept(key, "")
}

// PreferredExcept is Preferred as if replica except had left: the next
// owner of a session whose preferred replica just gave it up or lost it.
func (m *Members) PreferredExcept(key, except string) (replica string, settled bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best uint64
	for r, configured := range m.live {
		if !configured[key] || r == except {
			continue
		}
		if s := rendezvousScore(key, r); replica == "" || s > best || (s == best && r < replica) {
			replica, best = r, s
		}
	}
	_, selfLive := m.live[m.self]
	return replica, selfLive && time.Since(m.changed) >= m.settle
}

// rendezvousScore ranks replica for key; any replica computes the same.
func rendezvousScore(key, replica string) uint64 {
	h := sha256.Sum256([]byte(key + "\x00" + replica))
	return binary.BigEndian.Uint64(h[:8])
}
