// Package replay reads the connector's JetStream history back: by subject
// filter and by time or sequence range, written as NDJSON or re-published under
// another subject prefix, optionally at the original pace.
//
// # Reading
//
// A replay reads one stream (given, or found on the server from the subject
// filters) with an ordered consumer that starts at a time or a sequence. It
// stops at Until or EndSeq, or at the stream's last sequence as it was when the
// replay started: a stream that keeps receiving messages does not keep a replay
// waiting.
//
// # NDJSON record format
//
// One JSON object per message, one message per line, in stream order (the
// example is wrapped here):
//
//	{"stream":"LASERSELL_EXIT","subject":"lasersell.main.exit.W1","seq":42,
//	 "time":"2025-01-02T03:04:05.123456789Z",
//	 "headers":{"Connector-Type":["exit_signal_with_tx"],"Nats-Msg-Id":["..."]},
//	 "data":"{\"type\":\"exit_signal_with_tx\"}"}
//
// Fields:
//
//   - stream: the JetStream stream the message was read from.
//   - subject: the subject it was published on.
//   - seq: its stream sequence.
//   - time: its publish time (stored by the server), RFC 3339 with nanoseconds, UTC.
//   - headers: every stored header, name to list of values ({} when none).
//   - data: the payload as a JSON string, present when the payload is valid
//     UTF-8; decoding the string gives the payload byte for byte.
//   - data_base64: the payload in standard base64 (RFC 4648, padded), present
//     instead of data when the payload is not valid UTF-8.
//
// Exactly one of data and data_base64 is present; Record.Payload recovers the
// bytes either way.
//
// # Re-publishing
//
// With a prefix, each message goes to prefix + "." + its original subject,
// keeping its headers except Nats-Msg-Id and JetStream's publish-control
// headers (Nats-Expected-*, Nats-Rollup, Nats-TTL), and adding
// subjects.HeaderReplayStream, HeaderReplaySeq and HeaderReplayTime. A prefix that could
// put a message back into a subject one of the connector's streams captures is
// refused before anything is published. When some other stream (a sandbox)
// captures the targets, every copy waits for its JetStream ack.
//
// # Pacing
//
// With Speed s > 0, message i is written at its publish-time distance from the
// first message divided by s after the first one was written; Speed 0 writes
// as fast as possible.
package replay
