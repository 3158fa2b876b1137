package schemas_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetbridge/connector/connector/lasersell"
	"github.com/jetbridge/connector/connector/openstream"
	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

// update re-records the simulator transcripts in ../testdata:
//
//	go test ./schemas -run SimulatorOutput -args -update
var update = flag.Bool("update", false, "re-record testdata transcripts from the simulators")

// allStreams are the streams of the kinds the connector is built with.
var allStreams = subjects.Streams(subjects.LaserSell(), subjects.OpenStream())

// validator compiles every schema of the catalogue once.
type validator struct {
	cat      *schemas.Catalogue
	compiled map[string]*jsonschema.Schema
}

// schemaURL is where a schema's document is registered with the compiler:
// its own $id, checked by TestEverySchemaCompiles.
func schemaURL(name string) string {
	return "https://github.com/jetbridge/connector/schemas/" + name + ".json"
}

func newValidator(t testing.TB) *validator {
	t.Helper()
	cat, err := schemas.Load(lasersell.Schemas(), openstream.Schemas())
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.AssertContent()
	for _, s := range cat.All() {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(s.JSON))
		if err != nil {
			t.Fatalf("schema %s is not JSON: %v", s.Name, err)
		}
		if err := c.AddResource(schemaURL(s.Name), doc); err != nil {
			t.Fatalf("schema %s: %v", s.Name, err)
		}
	}
	v := &validator{cat: cat, compiled: map[string]*jsonschema.Schema{}}
	for _, s := range cat.All() {
		sch, err := c.Compile(schemaURL(s.Name))
		if err != nil {
			t.Fatalf("schema %s does not compile: %v", s.Name, err)
		}
		v.compiled[s.Name] = sch
	}
	return v
}

// validate checks payload against the named schema. A raw schema (malformed
// frames) accepts any bytes that are not JSON and constrains those that are.
func (v *validator) validate(name string, payload []byte) error {
	sch, ok := v.compiled[name]
	if !ok {
		return fmt.Errorf("no schema %s", name)
	}
	s, _ := v.cat.Lookup(name)
	if !json.Valid(payload) {
		if s.Raw {
			return nil
		}
		return fmt.Errorf("%s: payload is not JSON: %.120q", name, payload)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := sch.Validate(inst); err != nil {
		return fmt.Errorf("%s: %.300q: %v", name, payload, err)
	}
	return nil
}

// laserSellSchema names the schema of one LaserSell server frame by its type,
// the way the source routes it.
func (v *validator) laserSellSchema(frame []byte) string {
	var f struct {
		Type any `json:"type"`
	}
	if json.Unmarshal(frame, &f) != nil {
		return "lasersell/malformed"
	}
	typ, ok := f.Type.(string)
	if !ok || typ == "" {
		return "lasersell/malformed"
	}
	if s, known := v.cat.Lookup("lasersell/" + typ); known && s.Role == schemas.RoleMessage && !s.Raw && s.Type == typ {
		return "lasersell/" + typ
	}
	return "lasersell/event"
}

// openStreamSchema names the schema of one Open Stream line by its type, or
// error for a line with "error" and no type.
func (v *validator) openStreamSchema(line []byte) string {
	var f map[string]any
	if json.Unmarshal(line, &f) != nil || f == nil {
		return "openstream/malformed"
	}
	typ, hasType := f["type"]
	if !hasType {
		if _, hasErr := f["error"]; hasErr {
			return "openstream/error"
		}
		return "openstream/event"
	}
	if name, ok := typ.(string); ok {
		if s, known := v.cat.Lookup("openstream/" + name); known && s.Role == schemas.RoleMessage && !s.Raw && s.Type == name {
			return s.Name
		}
	}
	return "openstream/event"
}
