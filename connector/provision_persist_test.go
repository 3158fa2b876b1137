package connector_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// persistSpec is a low-lane stream of its own, so each case makes it anew.
func persistSpec(name string) subjects.StreamSpec {
	return subjects.StreamSpec{Name: name, Lane: subjects.LaneLow, Subjects: []string{strings.ToLower(name) + ".>"}}
}

func withPersist(persist, storage string) func(subjects.StreamSpec) connector.Retention {
	return func(spec subjects.StreamSpec) connector.Retention {
		r := connector.DefaultRetention(spec)
		r.Persist, r.Storage = persist, storage
		return r
	}
}

func serverPersist(t *testing.T, js jetstream.JetStream, name string) string {
	t.Helper()
	st, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return connector.PersistName(st.CachedInfo().Config.PersistMode)
}

// Persist mode async reaches the server for a single-replica file stream;
// a memory stream, which has nothing to write, is made in the default mode
// rather than refused; every stream defaults to the default mode.
func TestProvisionPersistModes(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{subjects.LaserSell()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, spec := range subjects.Streams(subjects.LaserSell()) {
		if got := serverPersist(t, env.JS, spec.Name); got != connector.PersistDefault {
			t.Errorf("%s made with the default retention in persist mode %s", spec.Name, got)
		}
	}
	cases := []struct {
		stream, persist, storage, want string
	}{
		{"PERSIST_ASYNC_FILE", connector.PersistAsync, "file", connector.PersistAsync},
		{"PERSIST_DEFAULT_FILE", connector.PersistDefault, "file", connector.PersistDefault},
		{"PERSIST_ASYNC_MEMORY", connector.PersistAsync, "memory", connector.PersistDefault},
	}
	for _, c := range cases {
		specs := []subjects.StreamSpec{persistSpec(c.stream)}
		if _, err := connector.Provision(ctx, env.JS, specs, withPersist(c.persist, c.storage), nil, 1); err != nil {
			t.Fatalf("%s: %v", c.stream, err)
		}
		if got := serverPersist(t, env.JS, c.stream); got != c.want {
			t.Errorf("%s (%s, %s storage): persist mode %s on the server, want %s", c.stream, c.persist, c.storage, got, c.want)
		}
	}
}

// The server cannot change an existing stream's persist mode: provisioning
// keeps it (a start does not fail, and sends no update), and the runtime
// warns at start, naming the stream, both modes and the way to apply it.
func TestProvisionKeepsAnExistingStreamsPersistMode(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{subjects.LaserSell()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got := serverPersist(t, env.JS, subjects.StreamLaserSellPnL); got != connector.PersistDefault {
		t.Fatalf("PnL stream made in persist mode %s", got)
	}
	updates, err := env.Conn.SubscribeSync("$JS.API.STREAM.UPDATE.>")
	if err != nil {
		t.Fatal(err)
	}
	async := func(spec subjects.StreamSpec) connector.Retention {
		r := connector.DefaultRetention(spec)
		if spec.Name == subjects.StreamLaserSellPnL {
			r.Persist = connector.PersistAsync
		}
		return r
	}
	var log connectortest.Buffer
	rt, err := connector.New(ctx, connector.Options{
		HighConn: env.Conn, LowConn: env.Conn, Kinds: []subjects.Kind{subjects.LaserSell()},
		Retention: async, Metrics: connector.NewMetrics(prometheus.NewRegistry()), Log: zerolog.New(&log),
	})
	if err != nil {
		t.Fatalf("a start with another persist mode than the existing stream's: %v", err)
	}
	rt.Close()
	if got := serverPersist(t, env.JS, subjects.StreamLaserSellPnL); got != connector.PersistDefault {
		t.Fatalf("PnL stream in persist mode %s after the start", got)
	}
	if err := env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := updates.Pending(); n != 0 {
		t.Fatalf("%d stream updates sent for a difference the server cannot apply", n)
	}
	warning := "stream LASERSELL_PNL keeps persist mode default (configured async): the server fixes it when the stream is made; delete the stream (and its history) to apply it"
	if !strings.Contains(log.String(), warning) {
		t.Fatalf("no warning %q at start; log:\n%s", warning, log.String())
	}
}

func TestRetentionRefusesAnUnknownPersistMode(t *testing.T) {
	r := connector.DefaultRetention(persistSpec("X"))
	r.Persist = "sometimes"
	err := r.Validate()
	if err == nil || !strings.Contains(err.Error(), `persist mode "sometimes" must be default or async`) {
		t.Fatalf("Validate: %v", err)
	}
}

// Exit signals and the other high-lane events must survive anything the
// server acknowledged: provisioning refuses async for their streams, before
// it creates anything.
func TestProvisionRefusesAsyncForAHighLaneStream(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{subjects.LaserSell()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := persistSpec("PERSIST_HIGH")
	spec.Lane = subjects.LaneHigh
	_, err := connector.Provision(ctx, env.JS, []subjects.StreamSpec{spec}, withPersist(connector.PersistAsync, "file"), nil, 1)
	if err == nil || !strings.Contains(err.Error(), "persist mode async is for the low-lane streams only") {
		t.Fatalf("Provision of a high-lane stream in async: %v", err)
	}
	if _, err := env.JS.Stream(ctx, spec.Name); err == nil {
		t.Fatal("the refused stream was created")
	}
}
