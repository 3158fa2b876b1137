package schemas_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell"
	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/connector/openstream"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

const (
	liveSession = "live"
	liveRobot   = "arm1"
	liveWallet  = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
	liveWait    = 5 * time.Second
)

// liveCommand is one command sent during the live test and whether the
// connector must accept it.
type liveCommand struct {
	subject, body string
	wantOK        bool
	wantCode      string // the refusal code, when !wantOK
}

// Both sources run against their simulators on an embedded JetStream; after
// a series of commands, every message of every stream must find a schema by
// its subject and validate, every reply must validate against its command's
// reply schema, every request must validate against its request schema
// exactly when the connector accepted it, and every audit record's reply
// must match the reply schema of its command.
func TestLivePublishedMessages(t *testing.T) {
	v := newValidator(t)
	env := connectortest.Start(t, connectortest.Options{CommandTimeout: 5 * time.Second, DrainTimeout: 5 * time.Second})

	// LaserSell: positions, exits, PnL, liquidity, ticks, a future type and garbage.
	lcfg := lssim.DefaultConfig()
	lcfg.APIKey = "live-key"
	lcfg.AutoPositions = 3
	lcfg.PnLRate = 100
	lcfg.ExitEvery = 100 * time.Millisecond
	lcfg.LiquidityEvery = 100 * time.Millisecond
	lcfg.TradeTickEvery = 100 * time.Millisecond
	lcfg.UnknownTypeEvery = 100 * time.Millisecond
	lcfg.GarbageEvery = 100 * time.Millisecond
	ls := lssim.New(lcfg, zerolog.Nop())
	if _, err := ls.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ls.Close)
	scfg := lasersell.DefaultConfig()
	scfg.APIKey, scfg.URL, scfg.Session = "live-key", ls.URL(), liveSession
	scfg.Wallets = []string{liveWallet}
	scfg.TargetProfitPct, scfg.StopLossPct = 50, 20
	scfg.BackoffBase, scfg.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	scfg.PingTimeout, scfg.ReconcileAfter = 2*time.Second, 50*time.Millisecond

	// Open Stream: a 5 ms joints monitor, CONTROL allowed for the trajectory and
	// motor services, and garbage lines.
	ocfg := ossim.DefaultConfig()
	ocfg.Faults.GarbageEvery = 100 * time.Millisecond
	os := ossim.New(ocfg, zerolog.Nop())
	addr, err := os.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Close() })
	rcfg := openstream.Defaults()
	rcfg.AckTimeout, rcfg.ControlWindow, rcfg.StopTimeout = 2*time.Second, 50*time.Millisecond, 500*time.Millisecond
	rcfg.BackoffMin, rcfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	robot := openstream.RobotConfig{
		Name: liveRobot, Addr: addr,
		Monitors:     map[string]openstream.Recipe{"joints": {URL: ossim.PathJointStates, Method: "GET", PeriodMS: 5}},
		ControlAllow: []string{"/project/robot/trajectory/*", ossim.PathMotorOn},
	}
	var lsrc *lasersell.Source
	var osrc *openstream.Robot
	stop := env.Run(connectortest.Opened(lasersell.NewSession(scfg), &lsrc),
		connectortest.Opened(openstream.RobotSession(robot, rcfg), &osrc))
	checkCommandsCatalogued(t, v.cat, subjects.KindLaserSell, lsrc.Commands())
	checkCommandsCatalogued(t, v.cat, subjects.KindOpenStream, osrc.Commands())
	connectortest.Eventually(t, liveWait, "an open LaserSell position and Open Stream data", func() bool {
		return len(ls.Positions()) > 0 && env.Count(subjects.StreamOpenStreamData, "openstream.>") > 0 &&
			env.Count(subjects.StreamLaserSellEvents, subjects.LaserSellEvent(liveSession, "hello_ok", subjects.Placeholder)) > 0
	})
	pos := ls.Positions()[0].ID

	lcmd := func(name string) string { return subjects.Command(subjects.KindLaserSell, liveSession, name) }
	ocmd := func(name string) string { return subjects.Command(subjects.KindOpenStream, liveRobot, name) }
	strategy := `{"target_profit_pct":40,"stop_loss_pct":10,"trailing_stop_pct":5}`
	commands := []liveCommand{
		{lcmd("configure"), `{"wallet_pubkeys":["` + liveWallet + `"],"strategy":` + strategy + `,"send_mode":"helius_sender","tip_lamports":1000}`, true, ""},
		{lcmd("update_strategy"), `{"strategy":` + strategy + `}`, true, ""},
		{lcmd("update_wallets"), `{"wallet_pubkeys":["` + liveWallet + `"]}`, true, ""},
		{lcmd("update_watch_wallets"), `{"watch_wallets":[{"pubkey":"9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM","mirror_sell":true}]}`, true, ""},
		{lcmd("update_position_strategy"), fmt.Sprintf(`{"position_id":%d,"strategy":%s}`, pos, strategy), true, ""},
		{lcmd("request_exit_signal"), fmt.Sprintf(`{"position_id":%d,"slippage_bps":300}`, pos), true, ""},
		{lcmd("close_position"), fmt.Sprintf(`{"position_id":%d}`, pos), true, ""},
		{lcmd("ping"), `{}`, true, ""},
		{lcmd("configure"), `{"wallet_pubkeys":["` + liveWallet + `"],"strategy":` + strategy + `,"turbo":true}`, false, "invalid_json"},
		{lcmd("update_strategy"), `{"strategy":{"stop_loss_pct":-1}}`, false, "invalid_strategy"},
		{lcmd("close_position"), fmt.Sprintf(`{"position_id":%d,"token_account":"TA"}`, pos), false, "invalid_position_selector"},
		{lcmd("teleport"), `{}`, false, "unknown_command"},
		{ocmd("monitor"), `{"name":"pose","url":"` + ossim.PathPoseCur + `","period_ms":50}`, true, ""},
		{ocmd("control"), `{"url":"` + ossim.PathMotorOn + `","method":"POST","body":{}}`, true, ""},
		{ocmd("control"), `{"url":"/project/robot/trajectory/no_such_service","method":"POST","body":{}}`, false, "control_err"},
		{ocmd("control"), `{"url":"/project/robot/motor_off","method":"POST"}`, false, "control_not_allowed"},
		{ocmd("control"), `{"url":"` + ossim.PathMotorOn + `","method":"GET"}`, false, "invalid_method"},
		{ocmd("stop"), `{"target":"control"}`, true, ""},
		{ocmd("stop"), `{"target":"control"}`, true, ""}, // nothing_to_stop: published on event.error
		{ocmd("stop"), `{"target":"monitor","name":"pose"}`, true, ""},
		{ocmd("stop"), `{"target":"sideways"}`, false, "invalid_target"},
	}
	audited := 0
	for _, c := range commands {
		msg, err := env.Conn.Request(c.subject, []byte(c.body), 10*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", c.subject, err)
		}
		var reply struct {
			OK    bool `json:"ok"`
			Error *struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			t.Fatalf("%s: reply %q: %v", c.subject, msg.Data, err)
		}
		if reply.OK != c.wantOK || (!c.wantOK && (reply.Error == nil || reply.Error.Code != c.wantCode)) {
			t.Fatalf("%s %s: reply %s; want ok=%v %s", c.subject, c.body, msg.Data, c.wantOK, c.wantCode)
		}
		rs, ok := v.cat.ReplyFor(c.subject)
		if !ok {
			t.Fatalf("no reply schema for %s", c.subject)
		}
		if err := v.validate(rs.Name, msg.Data); err != nil {
			t.Errorf("reply of %s: %v", c.subject, err)
		}
		audited++ // refusals and unknown commands are audited too
		if c.wantCode == "unknown_command" {
			if _, ok := v.cat.ForSubject(c.subject, ""); ok {
				t.Errorf("%s: a request schema for a command the source does not have", c.subject)
			}
			continue
		}
		// A request the connector decodes strictly matches its schema exactly
		// when it is well formed; refusals for state (control_err, not
		// allowed) are about well-formed requests.
		req, ok := v.cat.ForSubject(c.subject, "")
		if !ok {
			t.Fatalf("no request schema for %s", c.subject)
		}
		wellFormed := c.wantOK || c.wantCode == "control_err" || c.wantCode == "control_not_allowed"
		if err := v.validate(req.Name, []byte(c.body)); (err == nil) != wellFormed {
			t.Errorf("request %s %s: schema says %v, want well-formed=%v", c.subject, c.body, err, wellFormed)
		}
	}
	// A plain publish CONTROL (trajectory streaming) is audited too.
	if err := env.Conn.Publish(ocmd("control"), []byte(`{"url":"`+ossim.PathMotorOn+`","method":"POST"}`)); err != nil {
		t.Fatal(err)
	}
	audited++
	wanted := []string{
		"lasersell/hello_ok", "lasersell/balance_update", "lasersell/position_opened", "lasersell/position_closed",
		"lasersell/exit_signal_with_tx", "lasersell/pnl_update", "lasersell/pong", "lasersell/liquidity_snapshot",
		"lasersell/trade_tick", "lasersell/event", "lasersell/malformed",
		"openstream/data", "openstream/handshake_ack", "openstream/monitor_ack", "openstream/stop_ack",
		"openstream/control_err", "openstream/error", "openstream/malformed",
		"connector/status", "connector/audit",
	}
	// The catalogue's subject patterns serve as stream filters.
	stored := func(name string) uint64 {
		s, _ := v.cat.Lookup(name)
		var n uint64
		for _, p := range s.Subjects {
			n += env.Count(streamOf(t, p), p)
		}
		return n
	}
	connectortest.Eventually(t, liveWait, "every command audited and a message of every wanted schema stored", func() bool {
		if stored("connector/audit") < uint64(audited) {
			return false
		}
		for _, name := range wanted {
			if stored(name) == 0 {
				return false
			}
		}
		return true
	})
	if err := stop(); err != nil { // the final "stopped" statuses are published too
		t.Fatalf("runtime: %v", err)
	}

	seen := map[string]int{}
	for _, st := range allStreams {
		for _, m := range allMessages(t, env.JS, st.Name) {
			checkStored(t, v, m, seen)
		}
	}
	for _, want := range wanted {
		if seen[want] == 0 {
			t.Errorf("no stored message for %s (stored: %v)", want, seen)
		}
	}
	if seen["connector/audit"] != audited {
		t.Errorf("%d audit records, want %d", seen["connector/audit"], audited)
	}
	t.Logf("validated stored messages per schema: %v", seen)
}

// streamOf names the stream that captures a subject pattern.
func streamOf(t *testing.T, pattern string) string {
	t.Helper()
	concrete := strings.ReplaceAll(pattern, "*", "x1")
	for _, st := range allStreams {
		for _, p := range st.Subjects {
			if natsMatch(p, concrete) {
				return st.Name
			}
		}
	}
	t.Fatalf("no stream captures %s", pattern)
	return ""
}

// checkCommandsCatalogued requires a request and a reply schema for every
// command a source serves, and none for commands it does not have.
func checkCommandsCatalogued(t *testing.T, cat *schemas.Catalogue, kind string, commands []string) {
	t.Helper()
	var catalogued []string
	for _, s := range cat.All() {
		if s.Role == schemas.RoleRequest && strings.HasPrefix(s.Name, kind+"/cmd.") {
			catalogued = append(catalogued, strings.TrimPrefix(s.Name, kind+"/cmd."))
		}
	}
	want := slices.Sorted(slices.Values(commands))
	slices.Sort(catalogued)
	if !slices.Equal(catalogued, want) {
		t.Errorf("%s: catalogued commands %v, the source serves %v", kind, catalogued, want)
	}
	for _, c := range commands {
		subject := subjects.Command(kind, "x", c)
		if s, ok := cat.ReplyFor(subject); !ok || s.Name != kind+"/cmd."+c+".reply" {
			t.Errorf("%s: reply schema %q", subject, s.Name)
		}
	}
}

// checkStored validates one stream message against the schema of its
// subject and Connector-Type, and an audit record's request and reply
// against the schemas of its command.
func checkStored(t *testing.T, v *validator, m jetstream.Msg, seen map[string]int) {
	t.Helper()
	typ := m.Headers().Get(subjects.HeaderType)
	s, ok := v.cat.ForSubject(m.Subject(), typ)
	if !ok {
		t.Errorf("no schema for stored message on %s (type %q): %.200q", m.Subject(), typ, m.Data())
		return
	}
	seen[s.Name]++
	if s.Type != "" && typ != "" && s.Type != typ {
		t.Errorf("%s: schema %s is for type %s, the message says %s", m.Subject(), s.Name, s.Type, typ)
	}
	if err := v.validate(s.Name, m.Data()); err != nil {
		t.Errorf("stored on %s: %v", m.Subject(), err)
	}
	if s.Name != "connector/audit" {
		return
	}
	var rec struct {
		Command string          `json:"command"`
		Request json.RawMessage `json:"request"`
		Reply   json.RawMessage `json:"reply"`
	}
	if err := json.Unmarshal(m.Data(), &rec); err != nil {
		t.Errorf("audit %s: %v", m.Subject(), err)
		return
	}
	tokens := strings.Split(m.Subject(), ".")
	cmdSubject := subjects.Command(tokens[0], tokens[1], rec.Command)
	rs, ok := v.cat.ReplyFor(cmdSubject)
	if !ok {
		t.Errorf("audit %s: no reply schema for %s", m.Subject(), cmdSubject)
		return
	}
	if err := v.validate(rs.Name, rec.Reply); err != nil {
		t.Errorf("audit %s: recorded reply: %v", m.Subject(), err)
	}
	var reply struct {
		OK bool `json:"ok"`
	}
	_ = json.Unmarshal(rec.Reply, &reply)
	if req, ok := v.cat.ForSubject(cmdSubject, ""); ok && reply.OK {
		if err := v.validate(req.Name, rec.Request); err != nil {
			t.Errorf("audit %s: an accepted request does not match its schema: %v", m.Subject(), err)
		}
	}
}

// allMessages reads every message a stream holds.
func allMessages(t *testing.T, js jetstream.JetStream, stream string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	want := int(info.State.Msgs)
	if want == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("consumer on %s: %v", stream, err)
	}
	out := make([]jetstream.Msg, 0, want)
	for len(out) < want {
		batch, err := cons.Fetch(min(want-len(out), 1000), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatalf("fetch from %s: %v", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if err := batch.Error(); err != nil && err != nats.ErrTimeout {
			t.Fatalf("fetch from %s: %v", stream, err)
		}
		if n == 0 && ctx.Err() != nil {
			t.Fatalf("%s: read %d of %d messages", stream, len(out), want)
		}
	}
	return out
}
