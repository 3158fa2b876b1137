package connector

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// testStore is a Store on a fresh bucket of an embedded server, and the
// JetStream handle that made it.
func testStore(t *testing.T, bucket string) (*Store, jetstream.JetStream) {
	t.Helper()
	_, js := startTestJS(t, "UNUSED", "unused.>")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return &Store{kv: kv, bucket: bucket, prefix: "s."}, js
}

// A write that reaches a leader as it steps down is dropped without an
// answer: Put gives that attempt a bounded time and writes again, so the
// caller's whole budget is not spent on one lost message.
func TestStorePutRetriesAnUnansweredWrite(t *testing.T) {
	st, js := testStore(t, "WRITES")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, "WRITES"); err != nil {
		t.Fatal(err)
	}
	// A subscriber that never answers stands for the stepping-down leader.
	nc := js.Conn()
	swallow, err := nc.SubscribeSync("$KV.WRITES.>")
	if err != nil {
		t.Fatal(err)
	}
	back := make(chan error, 1)
	go func() {
		time.Sleep(writeAttemptFirst - 300*time.Millisecond) // before the second attempt
		_ = swallow.Unsubscribe()
		_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "WRITES"})
		back <- err
	}()

	budget, bcancel := context.WithTimeout(context.Background(), 3*writeAttemptFirst)
	defer bcancel()
	start := time.Now()
	if err := st.Put(budget, "k", []byte("v1")); err != nil {
		t.Fatalf("Put within %v with the first attempt unanswered: %v", 3*writeAttemptFirst, err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < writeAttemptFirst {
		t.Fatalf("Put returned after %v, before the unanswered attempt's bound %v", took, writeAttemptFirst)
	}
	got, err := st.Get(ctx, "k")
	if err != nil || string(got) != "v1" {
		t.Fatalf("Get after the retried Put: %q %v", got, err)
	}
	t.Logf("measured: stored %v after the first attempt went unanswered (attempt bound %v)", took.Round(time.Millisecond), writeAttemptFirst)
}

// No stream behind the bucket for a while (no responders): Delete retries
// until it is back.
func TestStoreDeleteRetriesNoResponders(t *testing.T) {
	st, js := testStore(t, "DELS")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, "DELS"); err != nil {
		t.Fatal(err)
	}
	back := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "DELS"})
		back <- err
	}()
	if err := st.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete while the bucket was away for 300 ms: %v", err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
}

// What a retry cannot fix is returned at once, and the caller's deadline
// ends the retries.
func TestStoreWriteGivesUp(t *testing.T) {
	st, js := testStore(t, "GIVEUP")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := st.Put(ctx, "bad key*", []byte("v")); !errors.Is(err, jetstream.ErrInvalidKey) {
		t.Fatalf("Put of an invalid key: %v", err)
	}
	if took := time.Since(start); took > writeAttemptFirst/2 {
		t.Fatalf("an invalid key took %v to refuse: it was retried", took)
	}
	if err := js.DeleteKeyValue(ctx, "GIVEUP"); err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer scancel()
	start = time.Now()
	err := st.Put(short, "k", []byte("v"))
	if err == nil {
		t.Fatal("Put into a deleted bucket succeeded")
	}
	if took := time.Since(start); took > 700*time.Millisecond+writeAttemptFirst/2 {
		t.Fatalf("Put kept retrying %v past its caller's 700 ms deadline", took)
	}
}
