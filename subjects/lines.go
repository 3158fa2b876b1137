package subjects

// KindLines is the first token of every subject of the example kind
// (examples/lines): newline-delimited JSON read from a TCP address.
const KindLines = "lines"

// StreamLinesEvents captures everything a lines session publishes.
const StreamLinesEvents = "LINES_EVENTS"

// Lines is the example kind's part of the contract: one high-lane stream
// holding its lines, its sessions' status and their malformed lines. It
// captures no cmd subject (lines.*.cmd.send is served by the runtime).
func Lines() Kind {
	return Kind{
		Name: KindLines,
		Streams: []StreamSpec{{
			Name:        StreamLinesEvents,
			Description: "Lines of the example lines kind, by type; connector status; malformed lines",
			Subjects:    eventPatterns(KindLines, linesEvent(Any, Any)),
			Lane:        LaneHigh,
		}},
	}
}

// LinesEvent is where a line of a session goes. lineType comes from upstream
// (the line's "type" field), so it passes through Token: no upstream string
// can add subject levels or wildcards.
func LinesEvent(session, lineType string) string { return linesEvent(session, Token(lineType)) }

// linesEvent takes its tokens as they are, so linesEvent(Any, Any) is the
// pattern of every line subject: derived from the builder, never written twice.
func linesEvent(session, lineType string) string {
	return join(KindLines, session, "line", lineType)
}
