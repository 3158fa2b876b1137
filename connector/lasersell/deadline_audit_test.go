package lasersell

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetbridge/connector/schemas"
)

// TestDeadlineAuditRecordMatchesSchemas: the audit record of a deadline's
// automatic request_exit_signal has the documented shape of every audit
// record, and its request and reply are what an operator's request_exit_signal
// would have recorded.
func TestDeadlineAuditRecordMatchesSchemas(t *testing.T) {
	issued := time.Date(2026, 3, 4, 5, 6, 7, 8000, time.FixedZone("east", 3600))
	frame := []byte(`{"type":"request_exit_signal","position_id":42}`)
	rec := deadlineAudit(42, issued, issued.Add(1500*time.Microsecond), frame)
	if rec.Origin != "deadline" || rec.WantsReply || rec.DurationMS != 1.5 {
		t.Fatalf("record %+v", rec)
	}
	doc, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}

	cat, err := schemas.Load(Schemas())
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	url := func(name string) string { return "https://github.com/jetbridge/connector/schemas/" + name + ".json" }
	for _, s := range cat.All() {
		d, err := jsonschema.UnmarshalJSON(bytes.NewReader(s.JSON))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddResource(url(s.Name), d); err != nil {
			t.Fatal(err)
		}
	}
	validate := func(name string, payload []byte) {
		t.Helper()
		sch, err := c.Compile(url(name))
		if err != nil {
			t.Fatalf("schema %s: %v", name, err)
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := sch.Validate(v); err != nil {
			t.Errorf("%s does not accept %s: %v", name, payload, err)
		}
	}
	validate("connector/audit", doc)
	validate("lasersell/cmd.request_exit_signal", rec.Request)
	validate("lasersell/cmd.request_exit_signal.reply", rec.Reply)
}
