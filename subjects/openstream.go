package subjects

// KindOpenStream is the first token of every Hi6 Open Stream subject.
const KindOpenStream = "openstream"

// Open Stream stream names.
const (
	StreamOpenStreamData  = "OPENSTREAM_DATA"
	StreamOpenStreamEvent = "OPENSTREAM_EVENTS"
)

// OpenStream is the Hyundai Hi6 Open Stream's part of the contract.
func OpenStream() Kind {
	return Kind{
		Name: KindOpenStream,
		Streams: []StreamSpec{
			{
				Name:        StreamOpenStreamData,
				Description: "Open Stream MONITOR data, per robot and monitor",
				Subjects:    []string{openStreamData(Any, Any)},
				Lane:        LaneLow,
			},
			{
				Name:        StreamOpenStreamEvent,
				Description: "Open Stream acks, errors and unknown events, connector status, malformed lines",
				Subjects:    eventPatterns(KindOpenStream, openStreamEvent(Any, Any)),
				Lane:        LaneHigh,
			},
		},
	}
}

// OpenStreamData is where MONITOR data of monitor M of robot R goes.
func OpenStreamData(robot, monitor string) string { return openStreamData(robot, Token(monitor)) }

func openStreamData(robot, monitor string) string {
	return join(KindOpenStream, robot, "data", monitor)
}

// OpenStreamEvent is where acks, errors and other non-data events of a robot go.
func OpenStreamEvent(robot, eventType string) string {
	return openStreamEvent(robot, Token(eventType))
}

func openStreamEvent(robot, eventType string) string {
	return join(KindOpenStream, robot, "event", eventType)
}
