package lasersell

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// BenchmarkHandlePnL measures routing one pnl_update into the low lane (parse,
// subject, Emit), the per-frame cost that bounds the source's PnL throughput.
func BenchmarkHandlePnL(b *testing.B) {
	env := connectortest.Start(b, connectortest.Options{})
	cfg := testConfig("ws://127.0.0.1:1/v1/ws")
	h := env.Host(subjects.KindLaserSell, cfg.Session, cfg.LaneSizes())
	src, err := New(cfg, h)
	if err != nil {
		b.Fatal(err)
	}
	c := &conn{sessionID: "42"}
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = []byte(`{"type":"pnl_update","position_id":` + strconv.Itoa(1000+i) +
			`,"profit_units":-123456,"proceeds_units":987654321,"server_time_ms":1706000000000,"token_price_quote":45678,"market_cap_quote":45678000000000}`)
	}
	ctx := context.Background()
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// The runtime owns an emitted payload: hand it a fresh copy, as ReadMessage does.
		data := append([]byte(nil), frames[i%len(frames)]...)
		if err := src.handleFrame(ctx, c, websocket.TextMessage, data, now); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
