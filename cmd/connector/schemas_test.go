package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/jetbridge/connector/schemas"
)

func TestSchemasListsTheCatalogueAligned(t *testing.T) {
	var out bytes.Buffer
	if err := runSchemas(nil, &out); err != nil {
		t.Fatal(err)
	}
	cat, err := schemas.Load(schemaSets(builtinKinds())...)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != len(cat.All())+1 {
		t.Fatalf("%d lines, want a header and %d schemas:\n%s", len(lines), len(cat.All()), out.String())
	}
	subjectCol := strings.Index(lines[0], "SUBJECT")
	if !strings.HasPrefix(lines[0], "NAME") || subjectCol < 0 {
		t.Fatalf("header %q", lines[0])
	}
	for i, s := range cat.All() {
		line := lines[i+1]
		if !strings.HasPrefix(line, s.Name+" ") || !strings.Contains(line, s.Description) {
			t.Errorf("line %q does not list %s", line, s.Name)
		}
		if line[subjectCol-1] != ' ' || line[subjectCol] == ' ' {
			t.Errorf("line %q: subject column not aligned at %d", line, subjectCol)
		}
	}
	if !strings.Contains(out.String(), "reply to lasersell.*.cmd.ping") {
		t.Errorf("replies are not marked:\n%s", out.String())
	}
}

func TestSchemasPrintsOneByNameOrSubject(t *testing.T) {
	for arg, want := range map[string]string{
		"lasersell/exit_signal_with_tx":      "lasersell/exit_signal_with_tx",
		"lasersell.default.exit.WALLET1":     "lasersell/exit_signal_with_tx",
		"lasersell.default.event.pong._":     "lasersell/pong",
		"openstream.arm1.data.joints":        "openstream/data",
		"openstream.arm1.cmd.monitor":        "openstream/cmd.monitor",
		"openstream/cmd.monitor.reply":       "openstream/cmd.monitor.reply",
		"openstream.arm1.status":             "connector/status",
		"lasersell.default.audit.configure":  "connector/audit",
		"lasersell.default.event.new_type.7": "lasersell/event",
	} {
		var out bytes.Buffer
		if err := runSchemas([]string{arg}, &out); err != nil {
			t.Fatalf("%s: %v", arg, err)
		}
		var doc struct {
			ID string `json:"$id"`
		}
		if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
			t.Fatalf("%s: output is not one JSON document: %v", arg, err)
		}
		if !strings.HasSuffix(doc.ID, "/"+want+".json") {
			t.Errorf("%s printed %s, want %s", arg, doc.ID, want)
		}
	}
}

func TestSchemasRefusesUnknownArguments(t *testing.T) {
	for _, args := range [][]string{{"lasersell/nope"}, {"nats.something.else"}, {"a", "b"}} {
		var out bytes.Buffer
		err := runSchemas(args, &out)
		var ce *configError
		if !errors.As(err, &ce) {
			t.Errorf("%v: want a usage error, got %v", args, err)
		}
		if out.Len() != 0 {
			t.Errorf("%v: printed %q on error", args, out.String())
		}
	}
}
