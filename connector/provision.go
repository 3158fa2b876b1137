package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// Retention is the configurable part of a stream's configuration.
type Retention struct {
	MaxAge   time.Duration
	MaxBytes int64
	Replicas int
	// Storage is "file" or "memory".
	Storage string
	// Duplicates is the Nats-Msg-Id deduplication window. It must cover the
	// longest upstream outage after which re-emitted facts should still be
	// recognised as copies.
	Duplicates time.Duration
	// Persist is PersistDefault or PersistAsync (provision_persist.go).
	Persist string
}

// DefaultRetention is the retention a stream gets when configuration is silent:
// high-lane history is kept for weeks, telemetry for a day; both capped in bytes.
func DefaultRetention(spec subjects.StreamSpec) Retention {
	r := Retention{MaxAge: 30 * 24 * time.Hour, MaxBytes: 1 << 30, Replicas: 1, Storage: "file", Duplicates: 2 * time.Minute, Persist: PersistDefault}
	if spec.Lane == LaneLow {
		r.MaxAge = 24 * time.Hour
	}
	if spec.Duplicates > 0 {
		r.Duplicates = spec.Duplicates // the kind knows what its reconnects re-emit
	}
	return r
}

// ValidateFor reports a retention that the server would refuse, or that
// spec's lane must not have: persist mode async, which loses acknowledged
// messages when the server dies, is for low-lane streams only (the high
// lanes' events must survive anything the server acknowledged).
func (r Retention) ValidateFor(spec subjects.StreamSpec) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.Persist == PersistAsync && spec.Lane != LaneLow {
		return fmt.Errorf("persist mode async is for the low-lane streams only (%s carries events that must survive a server crash)", spec.Name)
	}
	return nil
}

// Validate reports a retention that the server would refuse, naming the field.
func (r Retention) Validate() error {
	switch {
	case r.MaxAge < 0:
		return fmt.Errorf("max age %s is negative", r.MaxAge)
	case r.MaxBytes == 0 || r.MaxBytes < -1:
		return fmt.Errorf("max bytes %d must be positive (or -1 for unlimited)", r.MaxBytes)
	case r.Replicas < 1 || r.Replicas > 5:
		return fmt.Errorf("replicas %d must be 1..5", r.Replicas)
	case r.Storage != "file" && r.Storage != "memory":
		return fmt.Errorf("storage %q must be file or memory", r.Storage)
	case r.Duplicates < 0:
		return fmt.Errorf("duplicates window %s is negative", r.Duplicates)
	case r.MaxAge > 0 && r.Duplicates > r.MaxAge:
		return fmt.Errorf("duplicates window %s exceeds max age %s", r.Duplicates, r.MaxAge)
	case r.Persist != PersistDefault && r.Persist != PersistAsync:
		return fmt.Errorf("persist mode %q must be %s or %s", r.Persist, PersistDefault, PersistAsync)
	}
	return nil
}

// StreamConfig turns a spec and its retention into the JetStream configuration.
func StreamConfig(spec subjects.StreamSpec, r Retention) jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if strings.EqualFold(r.Storage, "memory") {
		storage = jetstream.MemoryStorage
	}
	return jetstream.StreamConfig{
		Name:        spec.Name,
		Description: spec.Description,
		Subjects:    spec.Subjects,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      r.MaxAge,
		MaxBytes:    r.MaxBytes,
		Replicas:    r.Replicas,
		Storage:     storage,
		Duplicates:  r.Duplicates,
		PersistMode: persistMode(r),
	}
}

// fastBatchAPILevel is the JetStream API level of fast batch publishing
// (nats-server 2.14). Servers before it refuse a stream configuration that
// mentions it at all.
const fastBatchAPILevel = 4

// apiLevel is the server's JetStream API level: which stream settings it knows.
func apiLevel(ctx context.Context, js jetstream.JetStream) (int, error) {
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return 0, fmt.Errorf("JetStream account info: %w", err)
	}
	return info.API.Level, nil
}

// lowLaneBatchable reports whether every low-lane stream of kinds, as the
// server holds it, accepts fast batches; if not, it says why. A server that
// does not know the feature (before 2.14) drops the field it does not know
// from the stored configuration.
func lowLaneBatchable(ctx context.Context, js jetstream.JetStream, kinds []subjects.Kind) (bool, string) {
	n := 0
	for _, k := range kinds {
		for _, spec := range k.Streams {
			if spec.Lane != LaneLow {
				continue
			}
			st, err := js.Stream(ctx, spec.Name)
			if err != nil {
				return false, fmt.Sprintf("stream %s: %v", spec.Name, err)
			}
			if !st.CachedInfo().Config.AllowBatchPublish {
				return false, fmt.Sprintf("stream %s does not allow batch publishing (nats-server 2.14 or newer is needed)", spec.Name)
			}
			n++
		}
	}
	if n == 0 {
		return false, "no low-lane stream"
	}
	return true, ""
}

// Provisioned is what Provision made or found.
type Provisioned struct {
	Buckets map[string]jetstream.KeyValue
	// AsyncPersist names the streams in persist mode async on the server.
	AsyncPersist []string
	// PersistMismatches are the streams whose persist mode on the server
	// is not the configured one (provision_persist.go).
	PersistMismatches []PersistMismatch
}

// Provision creates or updates every stream and KV bucket. It is idempotent: run
// at every start, it converges existing streams on the configured retention.
func Provision(ctx context.Context, js jetstream.JetStream, streams []subjects.StreamSpec,
	retention func(subjects.StreamSpec) Retention, buckets []subjects.BucketSpec, replicas int,
) (*Provisioned, error) {
	level, err := apiLevel(ctx, js)
	if err != nil {
		return nil, err
	}
	p := &Provisioned{}
	for _, spec := range streams {
		r := retention(spec)
		if err := r.ValidateFor(spec); err != nil {
			return nil, fmt.Errorf("stream %s: %w", spec.Name, err)
		}
		st, err := js.Stream(ctx, spec.Name)
		found := err == nil
		if !found && spec.Shared && !errors.Is(err, jetstream.ErrStreamNotFound) {
			// Provisioning it blind could take away subjects other kinds put there.
			return nil, fmt.Errorf("read stream %s: %w", spec.Name, err)
		}
		// Any other error: not known to be up to date, so provision it.
		if found && spec.Shared {
			spec.Subjects = withSubjects(spec.Subjects, st.CachedInfo().Config.Subjects)
		}
		cfg := StreamConfig(spec, r)
		// Telemetry may be published in fast batches (publish_batch.go)
		// where the server knows them; elsewhere the connector publishes it
		// one message at a time (lowLaneBatchable).
		cfg.AllowBatchPublish = level >= fastBatchAPILevel && spec.Lane == LaneLow
		if found {
			// Fixed when the stream was made: the server refuses to change it
			// (PersistMismatches reports a difference).
			cfg.PersistMode = st.CachedInfo().Config.PersistMode
		} else if level < asyncPersistAPILevel {
			cfg.PersistMode = jetstream.DefaultPersistMode // a server before 2.12 has one mode
		}
		// Nothing to change: no update for the cluster to replicate
		// (replicas starting together would each propose one).
		if !found || !sameManagedSettings(st.CachedInfo().Config, cfg) {
			if st, err = js.CreateOrUpdateStream(ctx, cfg); err != nil {
				return nil, placementError(fmt.Errorf("create or update stream %s: %w", spec.Name, err), spec.Name, "", cfg.Replicas)
			}
		}
		mode := st.CachedInfo().Config.PersistMode
		if mode == jetstream.AsyncPersistMode {
			p.AsyncPersist = append(p.AsyncPersist, spec.Name)
		}
		if m, ok := persistMismatch(spec.Name, mode, persistMode(r), level); ok {
			p.PersistMismatches = append(p.PersistMismatches, m)
		}
	}
	kvs := make(map[string]jetstream.KeyValue, len(buckets))
	for _, b := range buckets {
		cfg := jetstream.KeyValueConfig{
			Bucket:      b.Name,
			Description: b.Description,
			History:     b.History,
			Replicas:    max(replicas, 1),
			Storage:     jetstream.FileStorage,
		}
		kv := bucketUpToDate(ctx, js, cfg)
		var err error
		if kv == nil {
			kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
		}
		if err != nil {
			return nil, placementError(fmt.Errorf("create or update KV bucket %s: %w", b.Name, err), "", b.Name, max(replicas, 1))
		}
		kvs[b.Name] = kv
	}
	p.Buckets = kvs
	return p, nil
}

// sameManagedSettings reports whether have agrees with want on every stream
// setting provisioning makes: the fields StreamConfig fills, and
// AllowBatchPublish. The server fills in the others. A setting added to
// StreamConfig must be added here (TestSameManagedSettingsSeesEveryField).
func sameManagedSettings(have, want jetstream.StreamConfig) bool {
	return have.Name == want.Name && have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Retention == want.Retention && have.Discard == want.Discard && have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes && have.Replicas == want.Replicas && have.Storage == want.Storage &&
		have.Duplicates == want.Duplicates && have.AllowBatchPublish == want.AllowBatchPublish &&
		have.PersistMode == want.PersistMode
}

// bucketUpToDate returns the bucket when the server already holds it with
// every setting cfg makes, nil otherwise (or on any error).
func bucketUpToDate(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) jetstream.KeyValue {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		return nil
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return nil
	}
	have := bs.Config()
	if have.Description != cfg.Description || have.History != cfg.History || have.Replicas != cfg.Replicas || have.Storage != cfg.Storage {
		return nil
	}
	return kv
}

// withSubjects adds to a shared stream's subjects those its copy on the
// server captures already (put there by processes with other kinds), so
// provisioning never takes them away.
func withSubjects(mine, onServer []string) []string {
	merged := slices.Clone(mine)
	for _, subj := range onServer {
		if !slices.Contains(merged, subj) {
			merged = append(merged, subj)
		}
	}
	return merged
}

// ReplicasError is a stream or bucket the server cannot hold with its
// replica count: the server is not clustered (Permanent), or the cluster
// has too few peers or too little room for it right now (a node down, or
// limits). The configuration variable to check names the stream or the
// bucket.
type ReplicasError struct {
	Stream, Bucket string // one of them
	Replicas       int
	Permanent      bool // replicas > 1 on a server that is not clustered
	Err            error
}

func (e *ReplicasError) Error() string { return e.Err.Error() }
func (e *ReplicasError) Unwrap() error { return e.Err }

// placementError classifies err as a *ReplicasError when the server says
// it cannot place the replicas, else returns it as is.
func placementError(err error, stream, bucket string, replicas int) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return err
	}
	switch apiErr.ErrorCode {
	case 10074: // replicas > 1 not supported in non-clustered mode
		return &ReplicasError{Stream: stream, Bucket: bucket, Replicas: replicas, Permanent: true, Err: err}
	case 10005, 10023, 10028, 10047, 10061: // no suitable peers, insufficient resources, memory, storage, replicas not updatable
		return &ReplicasError{Stream: stream, Bucket: bucket, Replicas: replicas, Err: err}
	}
	return err
}
