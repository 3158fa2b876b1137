package connector

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// A server before 2.12 has one persist mode: the warning says so instead of
// advising to recreate the stream, which would change nothing there.
func TestPersistMismatchOnAServerWithoutPersistModes(t *testing.T) {
	if _, ok := persistMismatch("S", jetstream.DefaultPersistMode, jetstream.DefaultPersistMode, 1); ok {
		t.Fatal("equal modes reported as a mismatch")
	}
	m, ok := persistMismatch("S", jetstream.DefaultPersistMode, jetstream.AsyncPersistMode, 1)
	if !ok || !strings.Contains(m.String(), "predates persist modes") || strings.Contains(m.String(), "delete") {
		t.Fatalf("API level 1: %v %q", ok, m)
	}
	m, ok = persistMismatch("S", jetstream.DefaultPersistMode, jetstream.AsyncPersistMode, asyncPersistAPILevel)
	if !ok || !strings.Contains(m.String(), "delete the stream") {
		t.Fatalf("API level %d: %v %q", asyncPersistAPILevel, ok, m)
	}
}
