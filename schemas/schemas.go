// Package schemas is the catalogue of JSON Schemas (draft 2020-12) for every
// payload the connector publishes and every command request and reply it
// serves. The schema files are embedded, one per payload kind, under
// lasersell/, openstream/ and connector/; the catalogue maps each to the NATS
// subjects it applies to, built with package subjects so the two cannot drift.
//
// Upstream payloads are the vendor's frames stored byte for byte: their
// schemas allow fields they do not name (the vendors add fields over time).
// Command requests are decoded strictly by the connector, so their schemas
// refuse unknown fields too. Malformed payloads are raw bytes (see Raw).
package schemas

import (
	"embed"
	"fmt"
	"sort"
	"strings"

	"github.com/jetbridge/connector/subjects"
)

//go:embed lasersell/*.json openstream/*.json connector/*.json
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

// wild is a placeholder subject token that every subjects builder keeps as
// it is; pattern turns it into the NATS wildcard "*".
const wild = "{wild}"

func pattern(subject string) string {
	tokens := strings.Split(subject, ".")
	for i, t := range tokens {
		if t == wild {
			tokens[i] = "*"
		}
	}
	return strings.Join(tokens, ".")
}

// entries lists the catalogue without the documents.
func entries() []Schema {
	ls, ost := subjects.KindLaserSell, subjects.KindOpenStream
	msg := func(name, typ, desc string, subs ...string) Schema {
		for i, s := range subs {
			subs[i] = pattern(s)
		}
		return Schema{Name: name, Subjects: subs, Type: typ, Role: RoleMessage, Description: desc}
	}
	lsEvent := func(typ, desc string) Schema {
		return msg(ls+"/"+typ, typ, desc, subjects.LaserSellEvent(wild, typ, wild))
	}
	osEvent := func(typ, desc string) Schema {
		return msg(ost+"/"+typ, typ, desc, subjects.OpenStreamEvent(wild, typ))
	}
	out := []Schema{
		msg(ls+"/exit_signal_with_tx", "exit_signal_with_tx", "exit signal with the unsigned sell transaction", subjects.LaserSellExit(wild, wild)),
		msg(ls+"/pnl_update", "pnl_update", "profit and loss of an open position (low lane)", subjects.LaserSellPnL(wild, wild)),
		lsEvent("hello_ok", "session established: session id, server time, limits"),
		lsEvent("pong", "answer to the application ping"),
		lsEvent("error", "error reported by the server"),
		lsEvent("position_opened", "position opened (re-emitted after reconnects)"),
		lsEvent("position_closed", "position closed"),
		lsEvent("balance_update", "token balance of a configured wallet"),
		lsEvent("liquidity_snapshot", "sellable size per slippage band"),
		lsEvent("trade_tick", "one trade in a position's market"),
		msg(ls+"/event", "", "any other server message type (future types)", subjects.LaserSellEvent(wild, wild, wild)),
		msg(ls+"/malformed", "malformed", "raw frame that is not a JSON object with a type", subjects.Malformed(ls, wild)),

		msg(ost+"/data", "data", "MONITOR sample (low lane; on the control connection: event.data)",
			subjects.OpenStreamData(wild, wild), subjects.OpenStreamEvent(wild, "data")),
		osEvent("handshake_ack", "answer to HANDSHAKE"),
		osEvent("monitor_ack", "answer to MONITOR"),
		osEvent("stop_ack", "answer to STOP"),
		osEvent("control_err", "a CONTROL's REST call failed"),
		osEvent("error", "error line of the controller (no type)"),
		msg(ost+"/event", "", "any other line: unknown types, objects with neither type nor error", subjects.OpenStreamEvent(wild, wild)),
		msg(ost+"/malformed", "malformed", "raw line that is not one JSON object, too long, or cut off", subjects.Malformed(ost, wild)),

		msg("connector/status", "status", "session lifecycle (also in KV CONNECTOR_STATUS)", subjects.Status(ls, wild), subjects.Status(ost, wild)),
		msg("connector/audit", "audit", "every command received: request, time, reply", subjects.Audit(ls, wild, wild), subjects.Audit(ost, wild, wild)),
	}
	for i := range out {
		out[i].Raw = out[i].Type == "malformed"
	}
	commands := func(kind string, names []string) {
		for _, c := range names {
			subject := pattern(subjects.Command(kind, wild, c))
			out = append(out,
				Schema{Name: kind + "/cmd." + c, Subjects: []string{subject}, Role: RoleRequest, Description: c + " command request"},
				Schema{Name: kind + "/cmd." + c + ".reply", Subjects: []string{subject}, Role: RoleReply, Description: c + " command reply"},
			)
		}
	}
	// The sources' Commands(); the tests check that these lists match them.
	commands(ls, []string{"configure", "update_strategy", "update_wallets", "update_watch_wallets",
		"update_position_strategy", "close_position", "request_exit_signal", "ping"})
	commands(ost, []string{"monitor", "control", "stop"})
	return append(out, Schema{
		Name: "connector/reply", Subjects: []string{pattern(subjects.Command(wild, wild, wild))}, Role: RoleReply,
		Description: "reply envelope of any command, including unknown_command refusals",
	})
}

// Load reads the embedded schema documents into a catalogue.
func Load() (*Catalogue, error) {
	list := entries()
	c := &Catalogue{list: list, byName: make(map[string]int, len(list))}
	for i := range list {
		doc, err := files.ReadFile(list[i].Name + ".json")
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", list[i].Name, err)
		}
		list[i].JSON = doc
		c.byName[list[i].Name] = i
	}
	return c, nil
}

// All returns every schema in listing order.
func (c *Catalogue) All() []Schema { return append([]Schema(nil), c.list...) }

// Files returns the names of every embedded schema file, so a test can check
// that each one is in the catalogue.
func Files() ([]string, error) {
	var names []string
	for _, dir := range []string{"lasersell", "openstream", "connector"} {
		entries, err := files.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("schema directory %s: %w", dir, err)
		}
		for _, e := range entries {
			names = append(names, dir+"/"+strings.TrimSuffix(e.Name(), ".json"))
		}
	}
	sort.Strings(names)
	return names, nil
}

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
