package connector

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Persist modes of a stream (STREAM_<NAME>_PERSIST_MODE), nats-server's
// persist_mode. With PersistDefault a single-replica file stream writes every
// message to its file before acknowledging it; with PersistAsync it
// acknowledges from memory and writes in the background (nats-server 2.12+),
// every 16 KiB or within about 15 ms. That write per message is a third of the stream's
// single ingest loop, the ceiling of low-lane throughput (BENCHMARKS.md).
// The price: if the nats-server process dies (SIGKILL, a crash; not a
// shutdown, which writes everything), the last few milliseconds of
// acknowledged messages are gone, which the connector did count as stored:
// consumers see them as Connector-Seq gaps, connector_lane_dropped_total does
// not count them. So it is an operator's choice, for a low-lane stream whose
// events are snapshots the next one supersedes; every stream defaults to
// PersistDefault.
const (
	PersistDefault = "default"
	PersistAsync   = "async"
)

// asyncPersistAPILevel is the JetStream API level of persist_mode
// (nats-server 2.12).
const asyncPersistAPILevel = 2

// persistMode is the persist mode StreamConfig asks of the server for r.
// Only a single-replica file stream has the choice: the server refuses async
// for the others, where it would change nothing (a replicated stream already
// writes in the background behind its replicated log; a memory stream writes
// nothing).
func persistMode(r Retention) jetstream.PersistModeType {
	if r.Persist == PersistAsync && r.Replicas <= 1 && r.Storage != "memory" {
		return jetstream.AsyncPersistMode
	}
	return jetstream.DefaultPersistMode
}

// PersistMismatch is a stream whose persist mode on the server is not the
// configured one: it was made under another setting (or by a server before
// 2.12), and the server cannot change it on an existing stream; or the
// server is older than 2.12 and has one mode only.
type PersistMismatch struct {
	Stream     string
	Have, Want jetstream.PersistModeType
	// Unsupported: the server predates persist modes (JetStream API level 2).
	Unsupported bool
}

func (m PersistMismatch) String() string {
	if m.Unsupported {
		return fmt.Sprintf("stream %s keeps persist mode %s (configured %s): this nats-server predates persist modes (2.12)",
			m.Stream, PersistName(m.Have), PersistName(m.Want))
	}
	return fmt.Sprintf("stream %s keeps persist mode %s (configured %s): the server fixes it when the stream is made; delete the stream (and its history) to apply it",
		m.Stream, PersistName(m.Have), PersistName(m.Want))
}

// persistMismatch compares a stream's persist mode on a server of API level
// level with the configured one.
func persistMismatch(stream string, have, want jetstream.PersistModeType, level int) (PersistMismatch, bool) {
	if have == want {
		return PersistMismatch{}, false
	}
	return PersistMismatch{Stream: stream, Have: have, Want: want, Unsupported: level < asyncPersistAPILevel}, true
}

// PersistName is a persist mode in the words of the configuration
// (PersistDefault, PersistAsync) and of nats-server's persist_mode.
func PersistName(m jetstream.PersistModeType) string {
	if m == jetstream.AsyncPersistMode {
		return PersistAsync
	}
	return PersistDefault
}
