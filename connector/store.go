package connector

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotFound is returned by Store.Get for a key that has no value.
var ErrNotFound = errors.New("key not found")

// Store is one session's scoped view of a KV bucket. State that must survive a
// restart or a fail-over lives here, never in the process.
type Store struct {
	kv     jetstream.KeyValue
	bucket string
	prefix string
}

// Get returns the value of key, or ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if s.kv == nil {
		return nil, fmt.Errorf("kv bucket %q is not provisioned", s.bucket)
	}
	e, err := s.kv.Get(ctx, s.prefix+key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("kv %s get %s: %w", s.bucket, s.prefix+key, err)
	}
	return e.Value(), nil
}

// Put stores value under key.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if s.kv == nil {
		return fmt.Errorf("kv bucket %q is not provisioned", s.bucket)
	}
	if _, err := s.kv.Put(ctx, s.prefix+key, value); err != nil {
		return fmt.Errorf("kv %s put %s: %w", s.bucket, s.prefix+key, err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if s.kv == nil {
		return fmt.Errorf("kv bucket %q is not provisioned", s.bucket)
	}
	if err := s.kv.Delete(ctx, s.prefix+key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("kv %s delete %s: %w", s.bucket, s.prefix+key, err)
	}
	return nil
}

// List returns every live key of this session (without the session prefix)
// with its value.
func (s *Store) List(ctx context.Context) (map[string][]byte, error) {
	if s.kv == nil {
		return nil, fmt.Errorf("kv bucket %q is not provisioned", s.bucket)
	}
	w, err := s.kv.WatchFiltered(ctx, []string{s.prefix + ">"}, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("kv %s list %s: %w", s.bucket, s.prefix, err)
	}
	defer func() { _ = w.Stop() }()
	out := make(map[string][]byte)
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // the initial values are complete
				return out, nil
			}
			out[strings.TrimPrefix(e.Key(), s.prefix)] = e.Value()
		case <-ctx.Done():
			return nil, fmt.Errorf("kv %s list %s: %w", s.bucket, s.prefix, ctx.Err())
		}
	}
}
