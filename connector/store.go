package connector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

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
	err := retryWrite(ctx, func(actx context.Context) error {
		_, err := s.kv.Put(actx, s.prefix+key, value)
		return err
	})
	if err != nil {
		return fmt.Errorf("kv %s put %s: %w", s.bucket, s.prefix+key, err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if s.kv == nil {
		return fmt.Errorf("kv bucket %q is not provisioned", s.bucket)
	}
	err := retryWrite(ctx, func(actx context.Context) error {
		if err := s.kv.Delete(actx, s.prefix+key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kv %s delete %s: %w", s.bucket, s.prefix+key, err)
	}
	return nil
}

// Bounds of one write attempt: a write that reaches a stream leader as it
// steps down is dropped without an answer, so waiting the caller's whole
// budget (a command's timeout) for that one answer would fail the command
// although the new leader takes writes within a few hundred milliseconds.
const (
	writeAttemptFirst = time.Second
	writeAttemptMax   = 4 * time.Second
)

// retryWrite runs a last-writer-wins write until it succeeds, fails for a
// reason a retry cannot fix, or ctx ends. Each attempt is bounded (starting
// at writeAttemptFirst and doubling, so a slow but working cluster still
// gets there); unanswered, no-responder and disconnected attempts are
// retried after a short wait. Writing the same value twice is harmless.
func retryWrite(ctx context.Context, write func(context.Context) error) error {
	bound, wait := writeAttemptFirst, retryFirstWait
	for {
		actx, cancel := context.WithTimeout(ctx, bound)
		err := write(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		switch publishErrorReason(err) {
		case reasonNoResponders, reasonTimeout, reasonDisconnected:
		default:
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
		bound, wait = min(2*bound, writeAttemptMax), min(2*wait, retryMaxWait)
	}
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
