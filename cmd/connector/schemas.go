package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/schemas"
)

const schemasUsage = `usage: connector schemas [NAME | SUBJECT]

  (no argument)  list every schema: name, subjects, description
  NAME           print that schema, for example lasersell/exit_signal_with_tx
  SUBJECT        print the schema of a concrete subject, for example
                 lasersell.default.exit.WALLET or openstream.arm1.cmd.monitor
                 (a command subject gives its request schema; NAME.reply its reply)`

// runSchemas lists the embedded JSON Schemas or prints one.
func runSchemas(args []string, stdout io.Writer) error {
	cat, err := schemas.Load(schemaSets(builtinKinds())...)
	if err != nil {
		return fmt.Errorf("load schemas: %w", err)
	}
	switch {
	case len(args) == 0:
		return listSchemas(cat, stdout)
	case len(args) > 1:
		return badUsage("schemas: takes at most one argument, a schema name or a subject\n%s", schemasUsage)
	}
	arg := args[0]
	if arg == "-h" || arg == "--help" || arg == "help" {
		_, err := fmt.Fprintln(stdout, schemasUsage)
		return err
	}
	s, ok := cat.Lookup(arg)
	if !ok && strings.Contains(arg, ".") && !strings.Contains(arg, "/") {
		s, ok = cat.ForSubject(arg, "")
	}
	if !ok {
		return badUsage("schemas: no schema named %q and no schema for it as a subject; `connector schemas` lists them", arg)
	}
	if _, err := stdout.Write(s.JSON); err != nil {
		return err
	}
	if len(s.JSON) == 0 || s.JSON[len(s.JSON)-1] != '\n' {
		_, err = io.WriteString(stdout, "\n")
	}
	return err
}

func listSchemas(cat *schemas.Catalogue, stdout io.Writer) error {
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSUBJECT\tDESCRIPTION")
	for _, s := range cat.All() {
		subject := strings.Join(s.Subjects, ", ")
		if s.Role == schemas.RoleReply {
			subject = "reply to " + subject
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, subject, s.Description)
	}
	return tw.Flush()
}

// schemaSets returns the kinds' schemas.
func schemaSets(kinds []connector.Kind) []schemas.Set {
	out := make([]schemas.Set, len(kinds))
	for i, k := range kinds {
		out[i] = k.Schemas
	}
	return out
}
