package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
)

// envSpec is one configuration struct and the prefix it is read with.
type envSpec struct {
	title  string
	prefix string
	spec   any
}

// envSpecs lists the process's configuration, then each kind's.
func envSpecs(kinds []connector.Kind) []envSpec {
	out := []envSpec{{"connector and NATS", "", &Config{}}}
	for _, k := range kinds {
		c := k.Config()
		out = append(out, envSpec{k.Title, c.EnvPrefix(), c})
	}
	return out
}

// envVariables lists every variable the connector reads (stream retention
// variables aside), as name, default, description.
func envVariables() ([][3]string, error) {
	var out [][3]string
	for _, s := range envSpecs(builtinKinds()) {
		var b strings.Builder
		format := "{{range .}}{{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}"
		if err := envconfig.Usagef(s.prefix, s.spec, &b, format); err != nil {
			return nil, fmt.Errorf("%s: %w", s.title, err)
		}
		for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			f := strings.SplitN(line, "\t", 3)
			if len(f) == 3 {
				out = append(out, [3]string{f[0], f[1], f[2]})
			}
		}
	}
	return out, nil
}

// printEnv is `connector env`: every variable with its default and meaning.
func printEnv(w io.Writer) error {
	vars, err := envVariables()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range vars {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v[0], v[1], v[2])
	}
	fmt.Fprintln(tw, "STREAM_<NAME>_{MAX_AGE,MAX_BYTES,REPLICAS,STORAGE,DUPLICATES}\t(per stream)\tretention of each stream, see README")
	fmt.Fprintln(tw, "GOGC\t400\tGo garbage-collector target (read by the Go runtime; the connector sets 400 unless given)")
	return tw.Flush()
}

// runConfig is `connector config`: the variables, or with --check the verdict
// on the current environment.
func runConfig(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("connector config", flag.ContinueOnError)
	fs.SetOutput(w)
	check := fs.Bool("check", false, "load and validate the whole configuration without connecting to anything; exit status 2 when it is invalid")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return badConfig("config takes no arguments, only --check (got %q)", fs.Arg(0))
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
