package lasersell

import (
	"embed"
	"io/fs"

	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

//go:embed schemas/*.json
var schemaFiles embed.FS

// Schemas is the LaserSell part of the schema catalogue: every frame type the
// server sends, as stored, and every command's request and reply.
func Schemas() schemas.Set {
	const k, w = subjects.KindLaserSell, schemas.Wild
	event := func(typ, desc string) schemas.Schema {
		return schemas.Message(k+"/"+typ, typ, desc, subjects.LaserSellEvent(w, typ, w))
	}
	files, _ := fs.Sub(schemaFiles, "schemas") // a constant path: cannot fail
	return schemas.Set{Kind: k, Files: files, Entries: append([]schemas.Schema{
		schemas.Message(k+"/exit_signal_with_tx", "exit_signal_with_tx", "exit signal with the unsigned sell transaction", subjects.LaserSellExit(w, w)),
		schemas.Message(k+"/pnl_update", "pnl_update", "profit and loss of an open position (low lane)", subjects.LaserSellPnL(w, w)),
		event("hello_ok", "session established: session id, server time, limits"),
		event("pong", "answer to the application ping"),
		event("error", "error reported by the server"),
		event("position_opened", "position opened (re-emitted after reconnects)"),
		event("position_closed", "position closed"),
		event("balance_update", "token balance of a configured wallet"),
		event("liquidity_snapshot", "sellable size per slippage band"),
		event("trade_tick", "one trade in a position's market"),
		schemas.Message(k+"/event", "", "any other server message type (future types)", subjects.LaserSellEvent(w, w, w)),
		schemas.Message(k+"/malformed", "malformed", "raw frame that is not a JSON object with a type", subjects.Malformed(k, w)),
	}, schemas.Commands(k, commandNames()...)...)}
}
