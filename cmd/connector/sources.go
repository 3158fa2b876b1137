package main

import (
	"slices"
	"strings"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell"
	"github.com/jetbridge/connector/connector/openstream"
	"github.com/jetbridge/connector/subjects"
)

// builtinKinds lists the kinds of upstream this binary is built with: adding
// a kind is one package, its subjects/<kind>.go, and one line here.
func builtinKinds() []connector.Kind {
	return []connector.Kind{
		lasersell.Kind(),
		openstream.Kind(),
	}
}

// kindNames lists the kinds' first subject tokens, in order.
func kindNames(kinds []connector.Kind) []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = k.Name()
	}
	return out
}

// subjectKinds returns the kinds' parts of the contract, for provisioning.
func subjectKinds(kinds []connector.Kind) []subjects.Kind {
	out := make([]subjects.Kind, len(kinds))
	for i, k := range kinds {
		out[i] = k.Subjects
	}
	return out
}

// selection is what CONNECTOR_SOURCES selected: the kinds and their sessions.
type selection struct {
	kinds    []connector.Kind
	sessions []connector.Session
}

// configuredSources reads each kind's variables and returns the kinds selected
// by CONNECTOR_SOURCES with the sessions their configuration declares.
func configuredSources(cfg Config, kinds []connector.Kind) (selection, error) {
	configs := make([]connector.KindConfig, len(kinds))
	for i, k := range kinds {
		configs[i] = k.Config()
		if err := loadEnv(configs[i].EnvPrefix(), configs[i]); err != nil {
			return selection{}, err
		}
	}
	names := kindNames(kinds)
	want := make([]bool, len(kinds))
	switch strings.TrimSpace(cfg.Sources) {
	case "", "auto":
		for i, c := range configs {
			want[i] = c.Configured()
		}
	default:
		for _, k := range strings.Split(cfg.Sources, ",") {
			i := slices.Index(names, strings.TrimSpace(k))
			if i < 0 {
				return selection{}, badConfig("CONNECTOR_SOURCES: unknown source %q (%s or auto)", strings.TrimSpace(k), strings.Join(names, ", "))
			}
			want[i] = true
		}
	}
	var out selection
	for i, k := range kinds {
		if !want[i] {
			continue
		}
		sessions, err := configs[i].Sessions()
		if err != nil {
			return selection{}, badConfig("%v", err)
		}
		out.kinds = append(out.kinds, k)
		out.sessions = append(out.sessions, sessions...)
	}
	if len(out.kinds) == 0 {
		var enable []string
		for _, k := range kinds {
			if k.Enable != "" {
				enable = append(enable, k.Enable)
			}
		}
		return selection{}, badConfig("no source is configured: set %s, or CONNECTOR_SOURCES", strings.Join(enable, " and/or "))
	}
	return out, nil
}
