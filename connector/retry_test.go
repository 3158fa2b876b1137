package connector

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestRetryUntilSuccess(t *testing.T) {
	var waits []time.Duration
	calls := 0
	err := Retry(context.Background(), Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond}, func(context.Context) error {
		if calls++; calls < 4 {
			return errors.New("not yet")
		}
		return nil
	}, func(_ error, wait time.Duration) { waits = append(waits, wait) })
	if err != nil || calls != 4 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	if want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond}; !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
}

func TestRetryEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	reported := 0
	start := time.Now()
	time.AfterFunc(20*time.Millisecond, cancel)
	err := Retry(ctx, Backoff{Base: time.Hour, Max: time.Hour}, func(context.Context) error {
		return errors.New("down")
	}, func(error, time.Duration) { reported++ })
	if !errors.Is(err, context.Canceled) || reported != 1 {
		t.Fatalf("err %v, %d reports; want canceled after 1", err, reported)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("returned %s after the cancel", waited)
	}
	// A failure caused by the end of ctx is not reported.
	err = Retry(ctx, Backoff{}, func(context.Context) error { return context.Canceled }, func(error, time.Duration) { reported++ })
	if !errors.Is(err, context.Canceled) || reported != 1 {
		t.Fatalf("err %v, %d reports after ctx ended", err, reported)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), 0) || !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not pass")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, 0) || Sleep(ctx, time.Hour) {
		t.Fatal("Sleep passed after ctx ended")
	}
}
