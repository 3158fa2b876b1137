package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// glueWindow is the glue's (and the raw-4096 baseline's) bound on
// unacknowledged async publishes, as issue 12 specifies.
const glueWindow = 4096

// glueResult is what the glue prints when it stops.
type glueResult struct {
	Frames, PnL, Acked, Failed int64
}

// roleGlue is the hand-written glue of issue 12: the program a competent user
// writes instead of running the connector. It reads the LaserSell stream with
// gorilla/websocket, decodes only what routing needs, and publishes every
// frame verbatim with one nats.go JetStream context (PublishAsync, at most
// BENCH_WINDOW unacknowledged, ack and error callbacks counting) to the
// subjects the connector uses, so the same streams store them. It is
// deliberately plain: no reconnect, no Nats-Msg-Id, no priority, no drops
// (a slow publish stops the reading, so the simulator's socket backs up), and
// GOGC left at Go's default. The counters it serves at /metrics are the
// benchmark's only addition.
func roleGlue() error {
	window, err := strconv.Atoi(os.Getenv("BENCH_WINDOW"))
	if err != nil {
		return fmt.Errorf("BENCH_WINDOW: %w", err)
	}
	session := os.Getenv("BENCH_GLUE_SESSION")
	var frames, pnl, acked, failed atomic.Int64

	nc, err := nats.Connect(os.Getenv("BENCH_NATS_URL"))
	if err != nil {
		return fmt.Errorf("glue: connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { acked.Add(1) }),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }),
	)
	if err != nil {
		return fmt.Errorf("glue: jetstream: %w", err)
	}

	ws, _, err := websocket.DefaultDialer.Dial(os.Getenv("BENCH_GLUE_URL"), http.Header{"x-api-key": {benchAPIKey}})
	if err != nil {
		return fmt.Errorf("glue: dial LaserSell: %w", err)
	}
	defer ws.Close()
	configure := map[string]any{"type": "configure", "wallet_pubkeys": []string{benchWallet},
		"strategy": map[string]float64{"target_profit_pct": 50, "stop_loss_pct": 20}}
	if err := ws.WriteJSON(configure); err != nil {
		return fmt.Errorf("glue: send configure: %w", err)
	}

	// SIGTERM closes the socket, which ends the read loop; the loop's end
	// (deferred stop) ends this goroutine otherwise.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = ws.Close()
	}()
	metrics, err := serveGlueMetrics(ctx, &frames, &pnl, &acked, &failed)
	if err != nil {
		return err
	}
	ready(map[string]string{"metrics": metrics})

	prefix := "lasersell." + session + "."
	var msg struct {
		Type       string `json:"type"`
		PositionID uint64 `json:"position_id"`
		Wallet     string `json:"wallet_pubkey"`
	}
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			break // closed by SIGTERM, or the server went away
		}
		frames.Add(1)
		msg.Type, msg.PositionID, msg.Wallet = "", 0, ""
		if err := json.Unmarshal(data, &msg); err != nil {
			failed.Add(1)
			continue
		}
		var subject string
		switch msg.Type {
		case "exit_signal_with_tx":
			subject = prefix + "exit." + msg.Wallet
		case "pnl_update":
			pnl.Add(1)
			subject = prefix + "pnl." + strconv.FormatUint(msg.PositionID, 10)
		default:
			subject = prefix + "event." + msg.Type
		}
		if _, err := js.PublishAsync(subject, data); err != nil {
			failed.Add(1)
		}
	}

	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
	}
	b, _ := json.Marshal(glueResult{Frames: frames.Load(), PnL: pnl.Load(), Acked: acked.Load(), Failed: failed.Load()})
	fmt.Printf("BENCH-RESULT %s\n", b)
	return nil
}

// serveGlueMetrics serves the glue's counters in the Prometheus text format
// (so the benchmark samples it like the connector) until ctx ends, and
// returns the URL.
func serveGlueMetrics(ctx context.Context, frames, pnl, acked, failed *atomic.Int64) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("glue: metrics listener: %w", err)
	}
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "glue_frames_total %d\nglue_pnl_total %d\nglue_acked_total %d\nglue_failed_total %d\n",
			frames.Load(), pnl.Load(), acked.Load(), failed.Load())
	})}
	go func() { _ = hs.Serve(ln) }()
	context.AfterFunc(ctx, func() { _ = hs.Close() })
	return "http://" + ln.Addr().String() + "/metrics", nil
}
