package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// `connector demo -replicas 2` runs two replica processes sharing the demo's
// sessions, and its table names the owner of each and the replicas' pids.
// Killing the replica that owns the LaserSell session (SIGKILL, its pid read
// from CONNECTOR_REPLICAS as a user would) moves the session to the other
// within the demo's lease TTL; the demo restarts the killed replica.
func TestDemoReplicasTakeOver(t *testing.T) {
	natsAddr := freePort(t)
	t.Setenv("CONNECTOR_NATS_LISTEN", natsAddr)
	t.Setenv("CONNECTOR_HTTP_ADDR", "")
	t.Setenv("CONNECTOR_LEASE_TTL", "2s")
	// The replicas are this test binary: run as main with `run` (TestMain).
	t.Setenv(childModeEnv, "args")
	t.Setenv(childArgsEnv, `["run"]`)

	out := startTestDemo(t, "-replicas", "2", "-totals-every", "200ms")

	var nc *nats.Conn
	waitUntil(t, 20*time.Second, "the demo's NATS server", func() (err error) {
		nc, err = nats.Connect("nats://" + natsAddr)
		return err
	})
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ownerOf := func(key string) (string, error) {
		kv, err := js.KeyValue(context.Background(), subjects.BucketLeases)
		if err != nil {
			return "", err
		}
		e, err := kv.Get(context.Background(), key)
		if err != nil {
			return "", err
		}
		var doc struct{ Replica string }
		return doc.Replica, json.Unmarshal(e.Value(), &doc)
	}
	var owner string
	waitUntil(t, 30*time.Second, "every demo session owned", func() error {
		for _, k := range []string{"lasersell.demo", "openstream.arm1", "openstream.arm2"} {
			o, err := ownerOf(k)
			if err != nil || o == "" {
				return fmt.Errorf("%s: %q %v", k, o, err)
			}
		}
		owner, err = ownerOf("lasersell.demo")
		return err
	})
	waitUntil(t, 10*time.Second, "the table naming owners and pids", func() error {
		s := out.String()
		if !strings.Contains(s, "session owners (CONNECTOR_LEASES):") || !strings.Contains(s, "lasersell.demo") ||
			!strings.Contains(s, "replica-1  pid ") || !strings.Contains(s, "replica-2  pid ") {
			return fmt.Errorf("not yet:\n%s", s)
		}
		return nil
	})

	// Kill the owner as a user would: its pid from CONNECTOR_REPLICAS.
	members, err := js.KeyValue(context.Background(), subjects.BucketReplicas)
	if err != nil {
		t.Fatal(err)
	}
	e, err := members.Get(context.Background(), owner)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ PID int }
	if err := json.Unmarshal(e.Value(), &doc); err != nil || doc.PID == 0 {
		t.Fatalf("member %s: %s", owner, e.Value())
	}
	killed := time.Now()
	if err := syscall.Kill(doc.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "the other replica owning lasersell.demo", func() error {
		o, err := ownerOf("lasersell.demo")
		if err != nil || o == owner || o == "" {
			return fmt.Errorf("owner %q %v", o, err)
		}
		return nil
	})
	logMeasured(t, "demo -replicas 2 (lease TTL 2s): %s SIGKILLed, lasersell.demo owned by the other after %v",
		owner, time.Since(killed).Round(time.Millisecond))
	waitUntil(t, 20*time.Second, "the killed replica restarted by the demo", func() error {
		e, err := members.Get(context.Background(), owner)
		if err != nil {
			return err
		}
		var again struct{ PID int }
		if json.Unmarshal(e.Value(), &again) != nil || again.PID == doc.PID || again.PID == 0 {
			return fmt.Errorf("member %s: %s", owner, e.Value())
		}
		return nil
	})
}
