package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector/lasersell"
	"github.com/jetbridge/connector/connector/openstream"
)

// envSpec is one configuration struct and the prefix it is read with.
type envSpec struct {
	title  string
	prefix string
	spec   any
}

func envSpecs() []envSpec {
	ls := lasersell.DefaultConfig()
	os := openstream.Defaults()
	return []envSpec{
		{"connector and NATS", "", &Config{}},
		{"LaserSell source", lasersell.EnvPrefix, &ls},
		{"Open Stream source", "", &os},
	}
}

// envVariables lists every variable the connector reads (stream retention
// variables aside), as name, default, description.
func envVariables() ([][3]string, error) {
	var out [][3]string
	for _, s := range envSpecs() {
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
	return tw.Flush()
}
