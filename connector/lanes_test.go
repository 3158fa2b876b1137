package connector

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A producer waiting for its turn behind one that is blocked on a full high
// lane gives up when its own context ends: an audit record's bounded wait and
// a command's reply must not depend on the lane ever draining.
func TestHighQueuePutHonoursContextBehindABlockedProducer(t *testing.T) {
	q := newHighQueue(1)
	if err := q.put(context.Background(), queued{}); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() { blocked <- q.put(context.Background(), queued{}) }() // waits for room, holding the turn
	// Let the first producer take the turn (if it has not yet, the second one
	// below times out on the full lane instead: the same observable outcome).
	time.Sleep(20 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() { second <- q.put(ctx, queued{}) }()
	select {
	case err := <-second:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("put behind a blocked producer: %v, want deadline exceeded", err)
		}
	case <-time.After(5 * time.Second):
		q.close() // release both producers before failing
		t.Fatal("put behind a blocked producer ignored its context (ended after 50ms)")
	}

	// Closing the lane releases the blocked producer too.
	q.close()
	select {
	case err := <-blocked:
		if !errors.Is(err, errQueueClosed) {
			t.Fatalf("blocked producer: %v, want the lane closed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the lane did not release the blocked producer")
	}
}

// Connector-Seq numbers follow queue order with several producers.
func TestHighQueueNumbersInQueueOrder(t *testing.T) {
	q := newHighQueue(4096)
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 500 {
				if err := q.put(context.Background(), queued{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	buf := q.poll(nil, 4096)
	if len(buf) != 4000 {
		t.Fatalf("%d queued, want 4000", len(buf))
	}
	for i, it := range buf {
		if it.seq != uint64(i+1) {
			t.Fatalf("item %d has seq %d", i, it.seq)
		}
	}
}
