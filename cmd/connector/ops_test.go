package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// statusBody is the /status document.
type statusBody struct {
	LowLane struct {
		Publishing, Why string
		PersistAsync    []string `json:"persist_async"`
	} `json:"low_lane"`
	Sessions []struct {
		Source, Session string
		Connected       bool
		State           string
		UpstreamSession string `json:"upstream_session"`
		Limits          map[string]any
		LastEvent       *time.Time `json:"last_event"`
		Lanes           map[string]struct{ Events, Published, Dropped uint64 }
		Malformed       *uint64
	}
}

// collectServices asks every NATS micro service for verb (PING, INFO, STATS)
// and returns the answers by service name, once each name in want answered.
func collectServices[T any](t *testing.T, nc *nats.Conn, verb micro.Verb, want ...string) map[string]T {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	subject, err := micro.ControlSubject(verb, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	got := map[string]T{}
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(want) {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("$SRV.%s: %d of %v answered: %v", verb, len(got), want, err)
		}
		var id struct {
			Name string `json:"name"`
		}
		var v T
		if json.Unmarshal(msg.Data, &id) != nil || json.Unmarshal(msg.Data, &v) != nil {
			t.Fatalf("$SRV.%s answer %s", verb, msg.Data)
		}
		for _, w := range want {
			if id.Name == w {
				got[w] = v
			}
		}
	}
	return got
}

// The operator's view of a running connector: /healthz, /readyz (ready once
// both upstreams are handshaken, naming the session when one drops), /status,
// /metrics with events by type, the probe subcommand, the status KV bucket and
// stream, and the command services answering $SRV.PING, INFO and STATS.
func TestOperatorSurface(t *testing.T) {
	ls := lssim.DefaultConfig()
	ls.APIKey = "ops-key"
	ls.AutoPositions = 1
	lsSrv, lsURL, _, robotAddr := startSims(t, ls)

	natsAddr, httpAddr := freePort(t), freePort(t)
	for k, v := range map[string]string{
		"CONNECTOR_NATS_LISTEN": natsAddr, "CONNECTOR_NATS_STORE_DIR": t.TempDir(), "CONNECTOR_HTTP_ADDR": httpAddr,
		"CONNECTOR_DRAIN_TIMEOUT": "3s", "LOG_LEVEL": "error", "LOG_FORMAT": "json",
		"LASERSELL_URL": lsURL, "LASERSELL_API_KEY": "ops-key", "LASERSELL_SESSION": "ops",
		"LASERSELL_WALLETS": "OpsWallet1", "LASERSELL_TARGET_PROFIT_PCT": "5", "LASERSELL_BACKOFF_MAX": "200ms",
		"OPENSTREAM_ROBOTS": "arm=" + robotAddr, "OPENSTREAM_MONITORS": "arm/joints=/project/robot/joints/joint_states@10ms",
		"STREAM_OPENSTREAM_DATA_PERSIST_MODE": "async",
	} {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dispatch(ctx, []string{"run"}, &bytes.Buffer{}) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("run did not stop")
		}
	}
	t.Cleanup(stop)
	base := "http://" + httpAddr

	connectortest.Eventually(t, 15*time.Second, "/healthz", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	connectortest.Eventually(t, 20*time.Second, "/readyz 200", func() bool {
		code, r := readyzReport(t, base)
		return code == http.StatusOK && r.Ready
	})
	if err := dispatch(ctx, []string{"probe", base + "/readyz"}, &bytes.Buffer{}); err != nil {
		t.Fatalf("probe of a ready connector: %v", err)
	}
	if err := dispatch(ctx, []string{"probe", "-timeout", "1s", base + "/nothing-here"}, &bytes.Buffer{}); err == nil || strings.Contains(err.Error(), "configuration") {
		t.Fatalf("probe of a 404 must fail (exit status 1), got %v", err)
	}

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reply, err := nc.Request(subjects.Command("lasersell", "ops", "update_strategy"), []byte(`{"strategy":{"target_profit_pct":9}}`), 5*time.Second)
	if err != nil || !strings.Contains(string(reply.Data), `"ok":true`) {
		t.Fatalf("update_strategy: %v %s", err, reply.Data)
	}

	// /status: every session with its state and counters.
	var st statusBody
	connectortest.Eventually(t, 10*time.Second, "/status with events in both sessions", func() bool {
		_, body := get(t, base+"/status")
		st = statusBody{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status %q: %v", body, err)
		}
		return len(st.Sessions) == 2 && st.Sessions[0].Lanes["high"].Published > 0 && st.Sessions[1].Lanes["low"].Published > 10
	})
	if st.LowLane.Publishing != connector.LowLaneFastBatch {
		t.Fatalf("/status low_lane %+v, want fast batches on the embedded server", st.LowLane)
	}
	if !slices.Equal(st.LowLane.PersistAsync, []string{subjects.StreamOpenStreamData}) {
		t.Fatalf("/status low_lane %+v, want %s alone in persist mode async (STREAM_OPENSTREAM_DATA_PERSIST_MODE)", st.LowLane, subjects.StreamOpenStreamData)
	}
	lsSess, arm := st.Sessions[0], st.Sessions[1]
	if lsSess.Source != "lasersell" || lsSess.Session != "ops" || !lsSess.Connected || lsSess.State != "connected" ||
		lsSess.UpstreamSession == "" || lsSess.Limits == nil || lsSess.LastEvent == nil || lsSess.Malformed == nil {
		t.Fatalf("lasersell session in /status: %+v", lsSess)
	}
	if arm.Source != "openstream" || arm.Session != "arm" || !arm.Connected || arm.LastEvent == nil || arm.Lanes["low"].Events == 0 {
		t.Fatalf("robot in /status: %+v", arm)
	}
	if since := time.Since(*arm.LastEvent); since < 0 || since > time.Minute {
		t.Fatalf("robot last_event %v is not recent", arm.LastEvent)
	}
	if code, body := get(t, base+"/statusz"); code != http.StatusOK || !strings.Contains(body, `"upstream_session"`) {
		t.Fatalf("/statusz alias: %d %s", code, body)
	}

	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{
		`connector_events_by_type_total{session="ops",source="lasersell",type="hello_ok"}`,
		`connector_events_by_type_total{session="arm",source="openstream",type="data"}`,
		`connector_upstream_connected{session="ops",source="lasersell"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The processor controller runs (internal/procscale): its count is
	// between 1 and Go's default, whatever the load of the moment.
	if m := regexp.MustCompile(`(?m)^connector_gomaxprocs (\d+)$`).FindStringSubmatch(metrics); m == nil {
		t.Errorf("/metrics lacks connector_gomaxprocs")
	} else if n, _ := strconv.Atoi(m[1]); n < 1 || n > runtime.NumCPU() {
		t.Errorf("connector_gomaxprocs %d, want 1..%d", n, runtime.NumCPU())
	}

	// Status in NATS: the KV entry and the status subject's stream.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, subjects.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	connectortest.Eventually(t, 5*time.Second, "connected status in KV", func() bool {
		e, err := kv.Get(ctx, subjects.StatusKey("lasersell", "ops"))
		return err == nil && strings.Contains(string(e.Value()), `"state":"connected"`)
	})
	stream, err := js.Stream(ctx, subjects.StreamLaserSellEvents)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.GetLastMsgForSubject(ctx, subjects.Status("lasersell", "ops")); err != nil || !strings.Contains(string(m.Data), `"session":"ops"`) {
		t.Fatalf("last status message: %v", err)
	}

	// The command services, as `nats micro ls/info/stats` see them.
	pings := collectServices[micro.Ping](t, nc, micro.PingVerb, "connector-lasersell", "connector-openstream")
	if pings["connector-lasersell"].Version != version {
		t.Fatalf("PING %+v", pings)
	}
	infos := collectServices[micro.Info](t, nc, micro.InfoVerb, "connector-lasersell", "connector-openstream")
	endpoints := map[string]bool{}
	for _, info := range infos {
		for _, e := range info.Endpoints {
			endpoints[e.Subject] = true
		}
	}
	for _, subj := range []string{subjects.Command("lasersell", "ops", "update_strategy"), subjects.Command("openstream", "arm", "monitor")} {
		if !endpoints[subj] {
			t.Errorf("INFO lacks endpoint %s; has %v", subj, endpoints)
		}
	}
	stats := collectServices[micro.Stats](t, nc, micro.StatsVerb, "connector-lasersell")
	served := false
	for _, e := range stats["connector-lasersell"].Endpoints {
		served = served || (e.Subject == subjects.Command("lasersell", "ops", "update_strategy") && e.NumRequests >= 1)
	}
	if !served {
		t.Fatalf("STATS does not count the update_strategy request: %+v", stats["connector-lasersell"].Endpoints)
	}

	// An upstream that goes away makes the connector unready, naming the session.
	lsSrv.Close()
	connectortest.Eventually(t, 10*time.Second, "/readyz 503 naming lasersell.ops", func() bool {
		code, r := readyzReport(t, base)
		return code == http.StatusServiceUnavailable && strings.Join(failingNames(r), ",") == "session:lasersell.ops"
	})
	if err := dispatch(ctx, []string{"probe", base + "/readyz"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("probe of an unready connector: %v", err)
	}
	stop()
}
