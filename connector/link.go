package connector

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// errLinkLost ends the ack wait of a synchronous publish whose connection dropped.
var errLinkLost = fmt.Errorf("%w while waiting for the ack", nats.ErrDisconnected)

// linkWatch cuts the ack wait of synchronous publishes short when the NATS
// connection drops. A request in flight on a dead link is never answered:
// waiting out the whole ack timeout would hold the high lane for seconds after
// a sub-second outage. Cut short, the publish is retried (same Nats-Msg-Id) as
// soon as the connection is back.
type linkWatch struct {
	statuses      chan nats.Status
	stopListening func()
	done          chan struct{}

	conn *nats.Conn

	mu      sync.Mutex
	waiting context.CancelCauseFunc // the publish waiting for its ack, if any
	epoch   uint64                  // the client's reconnect count when it was sent
}

// watchLink starts the watch; its goroutine is owned by the caller, who must
// call stop.
func watchLink(conn *nats.Conn) *linkWatch {
	w := &linkWatch{conn: conn, statuses: conn.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for range w.statuses { // closed by stop
			// The waiting publish went out on the connection of its epoch.
			// That connection is gone when the client is not connected now,
			// or has reconnected since (a fast failover to another server).
			// An event of an outage over before the publish began matches
			// neither and is ignored.
			connected, reconnects := conn.IsConnected(), conn.Stats().Reconnects
			w.mu.Lock()
			if w.waiting != nil && (!connected || reconnects > w.epoch) {
				w.waiting(errLinkLost)
			}
			w.mu.Unlock()
		}
	}()
	stopListening := func() { conn.RemoveStatusListener(w.statuses) }
	w.stopListening = stopListening
	return w
}

// stop ends the watch and waits for its goroutine.
func (w *linkWatch) stop() {
	if w == nil {
		return
	}
	w.stopListening()
	<-w.done
}

// ackContext returns the context one synchronous publish waits under: it ends
// at the ack timeout, with ctx, or when the connection drops.
func (w *linkWatch) ackContext(ctx context.Context, ackTimeout time.Duration) (context.Context, func()) {
	cctx, cancelCause := context.WithCancelCause(ctx)
	actx, cancelTimeout := context.WithTimeout(cctx, ackTimeout)
	if w == nil {
		return actx, func() { cancelTimeout(); cancelCause(nil) }
	}
	epoch := w.conn.Stats().Reconnects
	w.mu.Lock()
	w.waiting, w.epoch = cancelCause, epoch
	w.mu.Unlock()
	return actx, func() {
		w.mu.Lock()
		w.waiting = nil
		w.mu.Unlock()
		cancelTimeout()
		cancelCause(nil)
	}
}
