package openstream

import (
	"embed"
	"io/fs"

	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

//go:embed schemas/*.json
var schemaFiles embed.FS

// Schemas is the Open Stream part of the schema catalogue: every line the
// controller sends, as stored, and every command's request and reply.
func Schemas() schemas.Set {
	const k, w = subjects.KindOpenStream, schemas.Wild
	event := func(typ, desc string) schemas.Schema {
		return schemas.Message(k+"/"+typ, typ, desc, subjects.OpenStreamEvent(w, typ))
	}
	files, _ := fs.Sub(schemaFiles, "schemas") // a constant path: cannot fail
	return schemas.Set{Kind: k, Files: files, Entries: append([]schemas.Schema{
		schemas.Message(k+"/data", "data", "MONITOR sample (low lane; on the control connection: event.data)",
			subjects.OpenStreamData(w, w), subjects.OpenStreamEvent(w, "data")),
		event("handshake_ack", "answer to HANDSHAKE"),
		event("monitor_ack", "answer to MONITOR"),
		event("stop_ack", "answer to STOP"),
		event("control_err", "a CONTROL's REST call failed"),
		event("error", "error line of the controller (no type)"),
		schemas.Message(k+"/event", "", "any other line: unknown types, objects with neither type nor error", subjects.OpenStreamEvent(w, w)),
		schemas.Message(k+"/malformed", "malformed", "raw line that is not one JSON object, too long, or cut off", subjects.Malformed(k, w)),
	}, schemas.Commands(k, commandNames()...)...)}
}
