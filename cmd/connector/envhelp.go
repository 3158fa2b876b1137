package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// envSpec is one configuration struct and the prefix it is read with.
type envSpec struct {
	title  string
	prefix string
	spec   any
}

// envSpecs lists the process's configuration, then each kind's.
func envSpecs(kinds []connector.Kind) []envSpec {
	out := []envSpec{{"Connector and NATS", "", &Config{}}}
	for _, k := range kinds {
		c := k.Config()
		out = append(out, envSpec{k.Title, c.EnvPrefix(), c})
	}
	return out
}

// envGroup is the variables of one configuration struct, each as name,
// default, description.
type envGroup struct {
	title string
	vars  [][3]string
}

// envGroups lists the variables the connector reads (stream retention
// variables aside), grouped as envSpecs groups them.
func envGroups() ([]envGroup, error) {
	var out []envGroup
	for _, s := range envSpecs(builtinKinds()) {
		var b strings.Builder
		format := "{{range .}}{{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}"
		if err := envconfig.Usagef(s.prefix, s.spec, &b, format); err != nil {
			return nil, fmt.Errorf("%s: %w", s.title, err)
		}
		g := envGroup{title: s.title}
		for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			f := strings.SplitN(line, "\t", 3)
			if len(f) == 3 {
				g.vars = append(g.vars, [3]string{f[0], f[1], f[2]})
			}
		}
		out = append(out, g)
	}
	return out, nil
}

// envVariables lists every variable the connector reads (stream retention
// variables aside), as name, default, description.
func envVariables() ([][3]string, error) {
	groups, err := envGroups()
	if err != nil {
		return nil, err
	}
	var out [][3]string
	for _, g := range groups {
		out = append(out, g.vars...)
	}
	return out, nil
}

// envWidth is the widest line `connector config` prints: it fits a terminal
// of 100 columns.
const envWidth = 100

// printEnv is `connector env`: every variable with its default and meaning,
// one block per variable (name and default, then the meaning wrapped below).
func printEnv(w io.Writer) error {
	groups, err := envGroups()
	if err != nil {
		return err
	}
	nameWidth := 0
	for _, g := range groups {
		for _, v := range g.vars {
			nameWidth = max(nameWidth, len(v[0]))
		}
	}
	var b strings.Builder
	variable := func(name, def, meaning string) {
		line := "  " + name
		if def != "" {
			line = fmt.Sprintf("  %-*s  default %s", nameWidth, name, def)
		}
		b.WriteString(line + "\n")
		for _, l := range wrapWords(meaning, envWidth-6) {
			b.WriteString("      " + l + "\n")
		}
	}
	for i, g := range groups {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(g.title + ":\n")
		for _, v := range g.vars {
			variable(v[0], v[1], v[2])
		}
	}
	var streams []string
	for _, spec := range subjects.Streams(subjectKinds(builtinKinds())...) {
		streams = append(streams, spec.Name)
	}
	b.WriteString("\nStream retention, per stream (README.md, Stream retention, has the defaults):\n")
	variable("STREAM_<NAME>_<SETTING>", "", "NAME is one of "+strings.Join(streams, ", ")+"; SETTING is one of "+
		strings.Join(streamFields, ", ")+". A name that is neither is refused.")
	b.WriteString("\nGo runtime:\n")
	variable("GOGC", "100", "Go garbage-collector target: a number (percent) or off; read by the Go runtime, whose default (100) measured best for the connector")
	variable("GOMAXPROCS", "", "Go scheduler processors. Unset: they follow the CPU the connector uses, from 1 up to the cores (or the container's CPU limit), doubling when nearly all are busy and giving one back after 3 quiet seconds (connector_gomaxprocs); one measured 0.84-0.90x the CPU per event of two on a 2-core machine. A number fixes the count")
	_, err = io.WriteString(w, b.String())
	return err
}

// wrapWords breaks text into lines of at most width bytes at spaces (a
// longer word gets a line of its own).
func wrapWords(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// runConfig is `connector config`: the variables, or with --check the verdict
// on the current environment.
func runConfig(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("connector config", flag.ContinueOnError)
	check := fs.Bool("check", false, "load and validate the whole configuration without connecting to anything; exit status 2 when it is invalid")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: connector config [--check]   (alias: connector env)\n\nWithout flags: every variable with its default and meaning.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, w); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return badUsage("config takes no arguments, only --check (got %q)", fs.Arg(0))
	}
	if !*check {
		return printEnv(w)
	}
	summary, err := checkConfig()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "configuration OK:", summary)
	return nil
}

// checkConfig loads everything `connector run` loads (process and NATS
// settings, stream retention, each selected source) and validates it, without
// opening a socket. It returns a one-line summary of what would run.
func checkConfig() (string, error) {
	cfg, err := loadConfig()
	if err != nil {
		return "", err
	}
	all := builtinKinds()
	if _, err := retention(all); err != nil {
		return "", err
	}
	sel, err := configuredSources(cfg, all)
	if err != nil {
		return "", err
	}
	kinds := kindNames(sel.kinds)
	natsTarget := "embedded server on " + cfg.EmbeddedConfig.Listen
	if cfg.NATSConfig.URL != "" {
		natsTarget = "from NATS_URL" // not echoed: it may carry credentials
	}
	httpAddr := "off"
	if cfg.HTTPAddr != "" {
		httpAddr = cfg.HTTPAddr
	}
	return fmt.Sprintf("sources %s; NATS %s; HTTP %s", strings.Join(kinds, ", "), natsTarget, httpAddr), nil
}
