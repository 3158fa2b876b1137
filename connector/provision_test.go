package connector_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// Two processes with different kinds share one JetStream: provisioning the
// audit stream for one kind must not take away the other kind's subjects
// (its command audits would then find no stream and block its high lane).
func TestSharedAuditStreamKeepsOtherKindsSubjects(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{subjects.LaserSell()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A second process, built with another kind, provisions after the first.
	if _, err := connector.Provision(ctx, env.JS, subjects.Streams(probeKind()), connector.DefaultRetention, nil, 1); err != nil {
		t.Fatal(err)
	}
	st, err := env.JS.Stream(ctx, subjects.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	got := st.CachedInfo().Config.Subjects
	for _, want := range []string{subjects.AuditPattern(subjects.KindLaserSell), subjects.AuditPattern("probe")} {
		if !slices.Contains(got, want) {
			t.Fatalf("audit stream captures %v: %s is missing", got, want)
		}
	}
}

// A restart (or a second replica) finds its streams and buckets as
// configured and sends no update for the cluster to replicate; a changed
// setting is updated.
func TestProvisionUpdatesOnlyWhatChanged(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{subjects.LaserSell()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	updates, err := env.Conn.SubscribeSync("$JS.API.STREAM.UPDATE.>")
	if err != nil {
		t.Fatal(err)
	}
	streams := subjects.Streams(subjects.LaserSell())
	buckets := subjects.Buckets(subjects.LaserSell())
	if len(buckets) == 0 {
		t.Fatal("no buckets to provision")
	}
	if _, err := connector.Provision(ctx, env.JS, streams, connector.DefaultRetention, buckets, 1); err != nil {
		t.Fatal(err)
	}
	if err := env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := updates.Pending(); n != 0 {
		t.Fatalf("%d stream updates sent for streams and buckets already as configured", n)
	}
	longer := func(spec subjects.StreamSpec) connector.Retention {
		r := connector.DefaultRetention(spec)
		if spec.Name == subjects.StreamLaserSellExit {
			r.MaxAge *= 2
		}
		return r
	}
	if _, err := connector.Provision(ctx, env.JS, streams, longer, nil, 1); err != nil {
		t.Fatal(err)
	}
	m, err := updates.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("no update for a changed max age: %v", err)
	}
	if m.Subject != "$JS.API.STREAM.UPDATE."+subjects.StreamLaserSellExit {
		t.Fatalf("update of %s, want %s", m.Subject, subjects.StreamLaserSellExit)
	}
	if err := env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := updates.Pending(); n != 0 {
		t.Fatalf("%d more updates for one changed stream", n)
	}
}
