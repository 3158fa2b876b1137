package subjects

import "slices"

// Kind is one source kind's part of the external contract: the first token of
// every subject its sessions own, and the streams and KV buckets it needs
// beside the shared ones. Each kind declares its Kind in subjects/<kind>.go,
// next to its subject builders, and derives the stream patterns from them.
type Kind struct {
	// Name is the first subject token, for example "lasersell".
	Name string
	// Streams capture the kind's subjects. None may capture a cmd subject:
	// JetStream would answer the request itself with a publish ack.
	Streams []StreamSpec
	// Buckets are the kind's own KV buckets (keys start with <kind>.<session>.).
	Buckets []BucketSpec
}

// Streams lists every stream the given kinds need: each kind's own, then the
// audit stream, which captures the audit subjects of all of them.
func Streams(kinds ...Kind) []StreamSpec {
	var out []StreamSpec
	for _, k := range kinds {
		out = append(out, k.Streams...)
	}
	return append(out, AuditStream(kinds...))
}

// AuditStream is the stream of every command received for the given kinds.
func AuditStream(kinds ...Kind) StreamSpec {
	patterns := make([]string, 0, len(kinds))
	for _, k := range kinds {
		patterns = append(patterns, AuditPattern(k.Name))
	}
	return StreamSpec{
		Name:        StreamAudit,
		Description: "Every command received for an upstream: what, when, outcome",
		Subjects:    patterns,
		Lane:        LaneHigh,
		Shared:      true,
	}
}

// Buckets lists the shared KV buckets, then each kind's own.
func Buckets(kinds ...Kind) []BucketSpec {
	out := []BucketSpec{
		{Name: BucketDesired, Description: "desired upstream state per session, re-applied after reconnects and restarts", History: 5},
		{Name: BucketStatus, Description: "last status of every upstream session", History: 1},
	}
	for _, k := range kinds {
		for _, b := range k.Buckets {
			if !slices.ContainsFunc(out, func(o BucketSpec) bool { return o.Name == b.Name }) {
				out = append(out, b)
			}
		}
	}
	return out
}

// eventPatterns is what a kind's high-lane events stream captures: its own
// event patterns, plus the status and malformed subjects the core publishes
// for every session of the kind.
func eventPatterns(kind string, events ...string) []string {
	return append(events, Status(kind, Any), Malformed(kind, Any))
}
