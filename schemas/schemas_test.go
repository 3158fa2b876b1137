package schemas_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jetbridge/connector/connector/lasersell"
	"github.com/jetbridge/connector/connector/openstream"
	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

// Every embedded file is in the catalogue and compiles as draft 2020-12, with
// its $id matching its name and a title and description for readers.
func TestEverySchemaCompiles(t *testing.T) {
	v := newValidator(t)
	files, err := schemas.Files(lasersell.Schemas(), openstream.Schemas())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range v.cat.All() {
		names = append(names, s.Name)
		var doc struct {
			Schema      string `json:"$schema"`
			ID          string `json:"$id"`
			Title       string `json:"title"`
			Description string `json:"description"`
		}
		if err := json.Unmarshal(s.JSON, &doc); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		if doc.Schema != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema %q, want draft 2020-12", s.Name, doc.Schema)
		}
		if doc.ID != schemaURL(s.Name) {
			t.Errorf("%s: $id %q, want %q", s.Name, doc.ID, schemaURL(s.Name))
		}
		if doc.Title == "" || doc.Description == "" || s.Description == "" || len(s.Subjects) == 0 {
			t.Errorf("%s: title, description and subjects are required", s.Name)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, files) {
		t.Fatalf("catalogue %v\n!= embedded files %v", names, files)
	}
}

// Every message schema's subjects are captured by a stream, and no request or
// reply subject is (JetStream would answer the request itself).
func TestSubjectsBelongToStreams(t *testing.T) {
	cat, err := schemas.Load(lasersell.Schemas(), openstream.Schemas())
	if err != nil {
		t.Fatal(err)
	}
	inStream := func(subject string) string {
		for _, st := range allStreams {
			for _, p := range st.Subjects {
				if natsMatch(p, subject) {
					return st.Name
				}
			}
		}
		return ""
	}
	for _, s := range cat.All() {
		for _, p := range s.Subjects {
			concrete := strings.ReplaceAll(p, "*", "x1")
			stream := inStream(concrete)
			if s.Role == schemas.RoleMessage && stream == "" {
				t.Errorf("%s: subject %s is in no stream", s.Name, p)
			}
			if s.Role != schemas.RoleMessage && stream != "" {
				t.Errorf("%s: command subject %s is captured by stream %s", s.Name, p, stream)
			}
		}
	}
}

func natsMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

func TestForSubject(t *testing.T) {
	cat, err := schemas.Load(lasersell.Schemas(), openstream.Schemas())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ subject, typ, want string }{
		{subjects.LaserSellExit("default", "WALLET1"), "", "lasersell/exit_signal_with_tx"},
		{subjects.LaserSellPnL("default", "42"), "", "lasersell/pnl_update"},
		{subjects.LaserSellEvent("default", "hello_ok", "_"), "", "lasersell/hello_ok"},
		{subjects.LaserSellEvent("s", "position_opened", "42"), "position_opened", "lasersell/position_opened"},
		{subjects.LaserSellEvent("s", "balance_update", "WALLET"), "", "lasersell/balance_update"},
		{subjects.LaserSellEvent("s", "market_regime", "_"), "market_regime", "lasersell/event"},
		{subjects.Malformed(subjects.KindLaserSell, "s"), "malformed", "lasersell/malformed"},
		{subjects.Status(subjects.KindLaserSell, "s"), "status", "connector/status"},
		{subjects.Audit(subjects.KindLaserSell, "s", "ping"), "audit", "connector/audit"},
		{subjects.Command(subjects.KindLaserSell, "s", "configure"), "", "lasersell/cmd.configure"},
		{subjects.OpenStreamData("arm1", "joints"), "", "openstream/data"},
		{subjects.OpenStreamEvent("arm1", "data"), "data", "openstream/data"},
		{subjects.OpenStreamEvent("arm1", "stop_ack"), "", "openstream/stop_ack"},
		{subjects.OpenStreamEvent("arm1", "error"), "error", "openstream/error"},
		{subjects.OpenStreamEvent("arm1", "unknown"), "unknown", "openstream/event"},
		{subjects.Malformed(subjects.KindOpenStream, "arm1"), "", "openstream/malformed"},
		{subjects.Status(subjects.KindOpenStream, "arm1"), "", "connector/status"},
		{subjects.Audit(subjects.KindOpenStream, "arm1", "control"), "", "connector/audit"},
		{subjects.Command(subjects.KindOpenStream, "arm1", "stop"), "", "openstream/cmd.stop"},
	} {
		got, ok := cat.ForSubject(tc.subject, tc.typ)
		if !ok || got.Name != tc.want {
			t.Errorf("ForSubject(%s, %q) = %q, %v; want %s", tc.subject, tc.typ, got.Name, ok, tc.want)
		}
	}
	for _, tc := range []struct{ subject, want string }{
		{subjects.Command(subjects.KindLaserSell, "s", "ping"), "lasersell/cmd.ping.reply"},
		{subjects.Command(subjects.KindOpenStream, "arm1", "monitor"), "openstream/cmd.monitor.reply"},
		{subjects.Command(subjects.KindOpenStream, "arm1", "reboot"), "connector/reply"},
	} {
		got, ok := cat.ReplyFor(tc.subject)
		if !ok || got.Name != tc.want {
			t.Errorf("ReplyFor(%s) = %q, %v; want %s", tc.subject, got.Name, ok, tc.want)
		}
	}
	for _, subject := range []string{"lasersell.s", "other.s.status", "lasersell.s.exit", "openstream.arm1.data.joints.extra"} {
		if got, ok := cat.ForSubject(subject, ""); ok {
			t.Errorf("ForSubject(%s) = %s, want none", subject, got.Name)
		}
	}
	if _, ok := cat.Lookup("lasersell/nope"); ok {
		t.Error("Lookup of an unknown name succeeded")
	}
}

// example is one line of testdata/examples/*.jsonl: a payload (JSON, or raw
// text for malformed frames), the schema it is checked against, and whether
// it must pass.
type example struct {
	Schema  string          `json:"schema"`
	Valid   bool            `json:"valid"`
	Why     string          `json:"why"`
	Payload json.RawMessage `json:"payload"`
	Raw     *string         `json:"raw"`
}

// The hand-written examples (every message type of PROTOCOLS.md, every
// command, and payloads that must be refused) behave as marked, and every
// schema has at least one valid example.
func TestHandWrittenExamples(t *testing.T) {
	v := newValidator(t)
	files, err := filepath.Glob(filepath.Join("..", "testdata", "examples", "*.jsonl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in testdata/examples: %v", err)
	}
	covered := map[string]bool{}
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "//") {
				continue
			}
			var ex example
			if err := json.Unmarshal([]byte(line), &ex); err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
			payload := []byte(ex.Payload)
			if ex.Raw != nil {
				payload = []byte(*ex.Raw)
			}
			err := v.validate(ex.Schema, payload)
			switch {
			case ex.Valid && err != nil:
				t.Errorf("%s:%d: want valid: %v", path, n, err)
			case !ex.Valid && err == nil:
				t.Errorf("%s:%d: %s accepted %s, want refused (%s)", path, n, ex.Schema, payload, ex.Why)
			case ex.Valid:
				covered[ex.Schema] = true
			}
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	for _, s := range v.cat.All() {
		if !covered[s.Name] {
			t.Errorf("schema %s has no valid hand-written example", s.Name)
		}
	}
}
