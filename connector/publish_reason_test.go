package connector

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Event publishes never set Nats-Expected-Last-Sequence, but if JetStream ever
// answered "wrong last sequence" the publisher must not retry it forever:
// the real server's answer is classified as permanent.
func TestPublishWrongLastSequenceIsPermanent(t *testing.T) {
	_, js := startTestJS(t, "CAS", "cas.>")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := js.Publish(ctx, "cas.x", []byte("{}"), jetstream.WithExpectLastSequence(42))
	if err == nil {
		t.Fatal("the server accepted a wrong expected last sequence")
	}
	if r := publishErrorReason(err); r != reasonWrongLastSequence || !permanentReason(r) {
		t.Fatalf("%v classified as %q (permanent %v)", err, r, permanentReason(r))
	}
	_, err = js.Publish(ctx, "nostream.x", []byte("{}"), jetstream.WithRetryAttempts(0))
	if r := publishErrorReason(err); r != reasonNoResponders || permanentReason(r) {
		t.Fatalf("%v classified as %q", err, r)
	}
	if !streamMissing(ctx, js, "nostream.x") || streamMissing(ctx, js, "cas.x") {
		t.Fatal("stream lookup wrong")
	}
}
