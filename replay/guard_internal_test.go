package replay

import (
	"errors"
	"testing"

	"github.com/jetbridge/connector/subjects"
)

// kinds are the connector's source kinds, as the command passes them.
var kinds = []subjects.Kind{subjects.LaserSell(), subjects.OpenStream()}

func TestOverlap(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"a.b.c", "a.b.c", true},
		{"a.b.c", "a.b.d", false},
		{"a.*.c", "a.b.*", true},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"a.b", "a.b.c", false},
		{"*.x.y", "s.x.*", true},
		{"s.openstream.*.data.*", "*.openstream.x.data.*", true},
		{"s.openstream.y.data.*", "*.openstream.x.data.*", false},
		{">", "anything.at.all", true},
		{"a.*", "b.>", false},
	} {
		if got := overlap(c.a, c.b); got != c.want || overlap(c.b, c.a) != c.want {
			t.Errorf("overlap(%q, %q) = %v, want %v (both ways)", c.a, c.b, got, c.want)
		}
	}
}

// TestCheckPrefixOverlapBeyondTheFirstToken covers live patterns whose first
// token is a wildcard, which only the overlap check catches.
func TestCheckPrefixOverlapBeyondTheFirstToken(t *testing.T) {
	live := map[string][]string{"ODD": {"*.openstream.x.data.*"}}
	for _, filters := range [][]string{
		{"openstream.x.data.*"}, {"openstream.*.data.pose"}, {"openstream.y.data.*", "openstream.>"},
	} {
		if err := checkPrefix("sandbox", filters, live, kinds); !errors.Is(err, ErrRefused) {
			t.Errorf("filters %v: got %v, want a refusal", filters, err)
		}
	}
	if err := checkPrefix("sandbox", []string{"openstream.y.data.*"}, live, kinds); err != nil {
		t.Errorf("uncaptured target refused: %v", err)
	}
	if err := checkPrefix("sandbox", []string{"x"}, map[string][]string{"ALL": {">"}}, kinds); !errors.Is(err, ErrRefused) {
		t.Errorf("a stream capturing everything: got %v", err)
	}
}
