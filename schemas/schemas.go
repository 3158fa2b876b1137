// Package schemas is the catalogue of JSON Schemas (draft 2020-12) for every
// payload the connector publishes and every command request and reply it
// serves. Each source kind brings its own Set (its schema files, embedded in
// its package, and the subjects each applies to, built with package subjects
// so the two cannot drift); this package embeds the documents every kind
// shares (status, audit, reply envelope) under connector/ and joins them.
//
// Upstream payloads are the vendor's frames stored byte for byte: their
// schemas allow fields they do not name (the vendors add fields over time).
// Command requests are decoded strictly by the connector, so their schemas
// refuse unknown fields too. Malformed payloads are raw bytes (see Raw).
package schemas

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/jetbridge/connector/subjects"
)

//go:embed connector/*.json
var files embed.FS

// Role says what a schema describes.
type Role string

// The roles of a schema.
const (
	// RoleMessage is a message stored in a JetStream stream.
	RoleMessage Role = "message"
	// RoleRequest is the body of a command request.
	RoleRequest Role = "request"
	// RoleReply is the body of a command reply (sent to the request's reply
	// subject, and recorded in the audit record).
	RoleReply Role = "reply"
)

// Schema is one entry of the catalogue.
type Schema struct {
	// Name identifies the schema: its file path without ".json", for example
	// "lasersell/exit_signal_with_tx" or "openstream/cmd.monitor.reply".
	Name string
	// Subjects are the subject patterns (NATS wildcards) the schema applies to.
	// For a reply schema they are the request subjects it answers.
	Subjects []string
	// Type is the Connector-Type header of the messages it describes ("" for
	// any type, and for requests and replies).
	Type string
	Role Role
	// Raw marks a payload that is the upstream's raw bytes, often not JSON:
	// the schema only constrains a payload that happens to parse as JSON.
	Raw bool
	// Description is one line for listings; the schema's own description is longer.
	Description string
	// JSON is the schema document.
	JSON []byte
}

// Catalogue is every schema, in listing order.
type Catalogue struct {
	list   []Schema
	byName map[string]int
}

// Set is one kind's schemas: what Kind.Schemas returns.
type Set struct {
	// Kind is the kind's first subject token; its schema names start with
	// "<kind>/".
	Kind string
	// Files holds the documents: <name without "<kind>/">.json at its root.
	Files fs.FS
	// Entries are the schemas without their documents (Load reads them).
	Entries []Schema
}

// Wild is a placeholder subject token that every subjects builder keeps as
// it is; the catalogue turns it into the NATS wildcard "*". Build a schema's
// subjects with the kind's own builders and Wild, for example
// subjects.Malformed(kind, schemas.Wild).
const Wild = "{wild}"

func pattern(subject string) string {
	tokens := strings.Split(subject, ".")
	for i, t := range tokens {
		if t == Wild {
			tokens[i] = "*"
		}
	}
	return strings.Join(tokens, ".")
}

// Message describes a stored message's payload; typ is its Connector-Type
// ("" for any). A "malformed" type is raw bytes (Schema.Raw).
func Message(name, typ, desc string, subjects ...string) Schema {
	subs := make([]string, len(subjects))
	for i, s := range subjects {
		subs[i] = pattern(s)
	}
	return Schema{Name: name, Subjects: subs, Type: typ, Role: RoleMessage, Description: desc, Raw: typ == "malformed"}
}

// Commands describes the request and reply of each command of a kind: the
// documents <kind>/cmd.<command> and <kind>/cmd.<command>.reply.
func Commands(kind string, names ...string) []Schema {
	var out []Schema
	for _, c := range names {
		subject := pattern(subjects.Command(kind, Wild, c))
		out = append(out,
			Schema{Name: kind + "/cmd." + c, Subjects: []string{subject}, Role: RoleRequest, Description: c + " command request"},
			Schema{Name: kind + "/cmd." + c + ".reply", Subjects: []string{subject}, Role: RoleReply, Description: c + " command reply"},
		)
	}
	return out
}

// shared lists the schemas every kind shares, for the given kinds.
func shared(kinds []string) []Schema {
	var status, audit []string
	for _, k := range kinds {
		status = append(status, subjects.Status(k, Wild))
		audit = append(audit, subjects.Audit(k, Wild, Wild))
	}
	return []Schema{
		Message("connector/status", "status", "session lifecycle (also in KV CONNECTOR_STATUS)", status...),
		Message("connector/audit", "audit", "every command received: request, time, reply", audit...),
		{
			Name: "connector/reply", Subjects: []string{pattern(subjects.Command(Wild, Wild, Wild))}, Role: RoleReply,
			Description: "reply envelope of any command, including unknown_command refusals",
		},
	}
}

// Load builds the catalogue of the kinds' sets and the shared schemas,
// reading every document.
func Load(sets ...Set) (*Catalogue, error) {
	var list []Schema
	var kinds []string
	for _, set := range sets {
		kinds = append(kinds, set.Kind)
		for _, e := range set.Entries {
			name, ok := strings.CutPrefix(e.Name, set.Kind+"/")
			if !ok {
				return nil, fmt.Errorf("schema %s: its name does not start with %q", e.Name, set.Kind+"/")
			}
			doc, err := fs.ReadFile(set.Files, name+".json")
			if err != nil {
				return nil, fmt.Errorf("schema %s: %w", e.Name, err)
			}
			e.JSON = doc
			list = append(list, e)
		}
	}
	for _, e := range shared(kinds) {
		doc, err := files.ReadFile(e.Name + ".json")
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", e.Name, err)
		}
		e.JSON = doc
		list = append(list, e)
	}
	c := &Catalogue{list: list, byName: make(map[string]int, len(list))}
	for i := range list {
		if _, dup := c.byName[list[i].Name]; dup {
			return nil, fmt.Errorf("schema %s is declared twice", list[i].Name)
		}
		c.byName[list[i].Name] = i
	}
	return c, nil
}

// Files returns the names of every schema document of the sets and of the
// shared ones, so a test can check that each one is in the catalogue.
func Files(sets ...Set) ([]string, error) {
	var names []string
	add := func(fsys fs.FS, dir, prefix string) error {
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			return fmt.Errorf("schema directory %s: %w", prefix, err)
		}
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".json") {
				names = append(names, prefix+"/"+strings.TrimSuffix(e.Name(), ".json"))
			}
		}
		return nil
	}
	for _, set := range sets {
		if err := add(set.Files, ".", set.Kind); err != nil {
			return nil, err
		}
	}
	if err := add(files, "connector", "connector"); err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// All returns every schema in listing order.
func (c *Catalogue) All() []Schema { return append([]Schema(nil), c.list...) }

// Lookup returns the schema of that name.
func (c *Catalogue) Lookup(name string) (Schema, bool) {
	i, ok := c.byName[name]
	if !ok {
		return Schema{}, false
	}
	return c.list[i], true
}

// ForSubject returns the schema of a message on a concrete subject: a stream
// message's payload, or for a command subject the request body. payloadType
// is optional (the Connector-Type header): among the schemas whose subjects
// match, one for that type wins; otherwise the most specific match wins, so
// lasersell.S.event.hello_ok.K finds lasersell/hello_ok and
// lasersell.S.event.some_new_type.K the generic lasersell/event.
func (c *Catalogue) ForSubject(subject, payloadType string) (Schema, bool) {
	return c.best(subject, payloadType, func(s *Schema) bool { return s.Role != RoleReply })
}

// ReplyFor returns the schema of the reply to a request on a concrete
// command subject; for a command name the source does not have, the generic
// envelope connector/reply (it answers unknown_command).
func (c *Catalogue) ReplyFor(subject string) (Schema, bool) {
	return c.best(subject, "", func(s *Schema) bool { return s.Role == RoleReply })
}

func (c *Catalogue) best(subject, payloadType string, eligible func(*Schema) bool) (Schema, bool) {
	bestIdx, bestWild, bestTyped := -1, 0, false
	for i := range c.list {
		s := &c.list[i]
		if !eligible(s) {
			continue
		}
		for _, p := range s.Subjects {
			n, ok := match(p, subject)
			if !ok {
				continue
			}
			typed := payloadType != "" && s.Type == payloadType
			better := bestIdx < 0 || (typed && !bestTyped) || (typed == bestTyped && n < bestWild)
			if better {
				bestIdx, bestWild, bestTyped = i, n, typed
			}
		}
	}
	if bestIdx < 0 {
		return Schema{}, false
	}
	return c.list[bestIdx], true
}

// match reports whether a concrete subject matches a pattern with NATS
// wildcards ("*" one token, ">" the rest), and how many tokens the
// wildcards covered (fewer is more specific).
func match(pattern, subject string) (wildcards int, ok bool) {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, t := range p {
		if t == ">" {
			return wildcards + len(s) - i, len(s) > i
		}
		if i >= len(s) {
			return 0, false
		}
		switch t {
		case "*":
			wildcards++
		case s[i]:
		default:
			return 0, false
		}
	}
	return wildcards, len(p) == len(s)
}
