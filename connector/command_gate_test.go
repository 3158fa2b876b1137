package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The default limits never refuse a 500 Hz CONTROL stream, even with jitter
// that bunches points, and a preloaded trajectory of DefaultCommandBurst
// points passes at once; a sustained stream above the rate is cut to it.
func TestTokenBucketDefaultsPassTrajectoryStreaming(t *testing.T) {
	t.Parallel()
	b := newTokenBucket(DefaultCommandRate, DefaultCommandBurst)
	now := time.Unix(1_700_000_000, 0)
	for i := 0; i < DefaultCommandBurst; i++ {
		if !b.allow(now) {
			t.Fatalf("preloaded point %d refused", i)
		}
	}
	if b.allow(now) {
		t.Fatal("burst + 1 at the same instant admitted")
	}
	// 60 s at 500 Hz, delivered in bunches of 10 every 20 ms.
	for tick := 0; tick < 3000; tick++ {
		now = now.Add(20 * time.Millisecond)
		for j := 0; j < 10; j++ {
			if !b.allow(now) {
				t.Fatalf("500 Hz point refused at tick %d", tick)
			}
		}
	}
	// 4000 Hz for 10 s: about DefaultCommandRate per second get through.
	admitted := 0
	for i := 0; i < 40000; i++ {
		now = now.Add(250 * time.Microsecond)
		if b.allow(now) {
			admitted++
		}
	}
	if want := 10 * DefaultCommandRate; admitted < want-DefaultCommandBurst || admitted > want+DefaultCommandBurst {
		t.Fatalf("4000 Hz for 10 s: %d admitted, want about %d", admitted, want)
	}
	// A clock that steps back does not mint tokens.
	b2 := newTokenBucket(1, 1)
	if !b2.allow(now) || b2.allow(now.Add(-time.Hour)) || b2.allow(now) {
		t.Fatal("a backwards clock step minted a token")
	}
	if newTokenBucket(-1, 0) != nil || !(*tokenBucket)(nil).allow(now) {
		t.Fatal("a negative rate must disable the limit")
	}
}

func TestDecodeStrictRefusesAmbiguousBodies(t *testing.T) {
	t.Parallel()
	type inner struct {
		Key string `json:"key"`
	}
	type body struct {
		URL   string          `json:"url"`
		Inner inner           `json:"inner"`
		List  []inner         `json:"list"`
		Raw   map[string]bool `json:"raw"`
	}
	for _, bad := range []string{
		`{"url":"/a","url":"/b"}`,
		`{"url":"/a","URL":"/b"}`,
		`{"inner":{"key":"a","KEY":"b"}}`,
		`{"list":[{"key":"a"},{"key":"b","Key":"c"}]}`,
		`{"raw":{"x":true,"x":false}}`,
		"{\"inner\":{\"key\":\"a\",\"\u212aey\":\"b\"}}", // Kelvin sign folds to k
		"{\"url\":\"\xff\"}",
		`{"url":"/a"} {"url":"/b"}`,
		`{"url":"/a"}` + "\n" + `{"url":"/b"}`,
		`[{"url":"/a"}]`,
		`{"url":1}`,
		`{"nope":1}`,
	} {
		var v body
		err := DecodeStrict([]byte(bad), &v)
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Code != CodeInvalidJSON {
			t.Errorf("%q: got %v, want %s", bad, err, CodeInvalidJSON)
		}
	}
	for _, good := range []string{
		``, `{}`, ` {"url":"/a","inner":{"key":"u"},"list":[{"key":"a"},{"key":"a"}],"raw":{"x":true,"y":false}} `,
		`{"inner":{"key":"url"},"url":"key"}`,
	} {
		var v body
		if err := DecodeStrict([]byte(good), &v); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}

// A flood of refusals for random session names (chosen by the requester)
// keeps a bounded number of sums, and every refusal is still accounted for:
// recorded one by one or summed.
func TestRefusalAuditorBoundsRandomNames(t *testing.T) {
	var records []AuditRecord
	var sessions []string
	a := newRefusalAuditor(context.Background(), func(_ context.Context, session, _ string, rec AuditRecord) {
		records = append(records, rec)
		sessions = append(sessions, session)
	})
	now := time.Now()
	const n = 5000
	for i := range n {
		a.record(context.Background(), fmt.Sprintf("s%d", i), CodeUnknownSession,
			AuditRecord{Command: fmt.Sprintf("c%d", i)}, now)
	}
	a.mu.Lock()
	kept := len(a.suppressed)
	a.mu.Unlock()
	if kept > maxSuppressedKeys+1 {
		t.Fatalf("%d sums kept for random names, bound %d", kept, maxSuppressedKeys+1)
	}
	a.stop(context.Background())
	// Summary records (Request null) stand for Suppressed refusals; the
	// others for themselves plus the ones summed into them.
	total := 0
	for _, r := range records {
		if string(r.Request) == "null" {
			total += r.Suppressed
		} else {
			total += 1 + r.Suppressed
		}
	}
	if total != n {
		t.Fatalf("audit accounts for %d refusals, want %d", total, n)
	}
	if !slices.Contains(sessions, manyKey) {
		t.Fatalf("no summary under %q", manyKey)
	}
}
