package natscluster

import (
	"context"
	"testing"
	"time"
)

// The whole cluster killed at once and restarted on its stores: every
// acknowledged publish and key is there, once; writing resumes by itself.
func TestRestartAllKeepsAckedPublishesOnce(t *testing.T) {
	c, js, kv := fixture(t)
	w := startWriter(js, kv)
	w.waitAcks(t, 50, "before the whole restart")

	start := time.Now()
	c.RestartAll()
	formed := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []string{stream, "KV_" + bucket} {
		if _, err := c.WaitStreamLeader(ctx, s, -1); err != nil {
			t.Fatal(err)
		}
	}
	led := time.Since(start)
	w.waitAcks(t, 50, "after the whole restart")
	first, _ := w.firstAckAfter(start)
	t.Logf("whole restart: formed again after %v, stream and bucket led after %v, first acked publish %v after the kill",
		formed.Round(time.Millisecond), led.Round(time.Millisecond), first.Sub(start).Round(time.Millisecond))
	w.finish(t)
	waitSameState(t, c, stream, "KV_"+bucket)
}
