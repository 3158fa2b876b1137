package replay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/subjects"
)

// ErrRefused marks a re-publish target refused because it could reach live
// subjects (or is not a usable subject).
var ErrRefused = errors.New("refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// validFilter reports why s is not a usable subject filter: empty tokens,
// whitespace, or '>' anywhere but as the last token.
func validFilter(s string) error {
	if s == "" {
		return errors.New("empty subject filter")
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return fmt.Errorf("subject filter %q has an empty token", s)
		case t == ">" && i != len(toks)-1:
			return fmt.Errorf("subject filter %q has '>' before its last token", s)
		case t == ">" || t == "*":
		case strings.ContainsAny(t, "*>") || strings.ContainsFunc(t, isSpaceOrControl):
			return fmt.Errorf("subject filter %q has an invalid token %q", s, t)
		}
	}
	return nil
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }

// overlap reports whether some subject matches both patterns ('*' is one
// token, '>' one or more trailing tokens).
func overlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) || i == len(bt):
			return len(at) == len(bt)
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] != "*" && bt[i] != "*" && at[i] != bt[i]:
			return false
		}
	}
}

// liveSubjects returns the connector's stream patterns: the ones the code
// declares and the ones the server's copies of those streams actually capture
// (an operator may have edited a stream).
func liveSubjects(ctx context.Context, js jetstream.JetStream, kinds []subjects.Kind) (map[string][]string, error) {
	live := map[string][]string{}
	for _, spec := range subjects.Streams(kinds...) {
		live[spec.Name] = append(live[spec.Name], spec.Subjects...)
		s, err := js.Stream(ctx, spec.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read stream %s: %w", spec.Name, err)
		}
		for _, subj := range s.CachedInfo().Config.Subjects {
			if !slices.Contains(live[spec.Name], subj) {
				live[spec.Name] = append(live[spec.Name], subj)
			}
		}
	}
	return live, nil
}

// checkPrefix refuses a re-publish prefix that could put a replayed message
// back where the connector's streams (or its consumers) would take it for live
// data. It returns nil only when no target subject of any filter can be
// captured by a connector stream.
func checkPrefix(prefix string, filters []string, live map[string][]string, kinds []subjects.Kind) error {
	if prefix == "" {
		return refuse("re-publish prefix is empty: messages would go back to their live subjects")
	}
	for _, t := range strings.Split(prefix, ".") {
		if !subjects.ValidToken(t) {
			return refuse("re-publish prefix %q: token %q is empty or has a wildcard, '.' or whitespace", prefix, t)
		}
	}
	first := strings.Split(prefix, ".")[0]
	if strings.HasPrefix(first, "$") || first == "_INBOX" {
		return refuse("re-publish prefix %q starts with a NATS system token (%s)", prefix, first)
	}
	for _, kind := range kinds {
		// Case-insensitive on purpose: "LaserSell.x" is not live, but it reads as
		// live to people and tools that fold case.
		if strings.EqualFold(first, kind.Name) {
			return refuse("re-publish prefix %q starts with the live source kind %q", prefix, kind.Name)
		}
	}
	names := make([]string, 0, len(live))
	for name := range live {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for _, pattern := range live[name] {
			if lead := strings.Split(pattern, ".")[0]; strings.EqualFold(first, lead) {
				return refuse("re-publish prefix %q starts with %q, which stream %s captures (%s)", prefix, lead, name, pattern)
			}
			for _, f := range filters {
				if target := prefix + "." + f; overlap(target, pattern) {
					return refuse("re-publish target %q would be captured by stream %s (%s)", target, name, pattern)
				}
			}
		}
	}
	return nil
}
