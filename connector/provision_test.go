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
