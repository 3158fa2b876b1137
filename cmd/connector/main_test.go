package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	ossim "github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

func TestBadConfigurationNamesTheVariable(t *testing.T) {
	for _, tc := range []struct{ env, value, want string }{
		{"CONNECTOR_ACK_TIMEOUT", "soon", "CONNECTOR_ACK_TIMEOUT"},
		{"LOG_LEVEL", "loud", "LOG_LEVEL"},
		{"STREAM_LASERSELL_PNL_STORAGE", "tape", "STREAM_LASERSELL_PNL"},
		{"STREAM_OPENSTREAM_DATA_PERSIST_MODE", "sometimes", "STREAM_OPENSTREAM_DATA"},
		{"STREAM_LASERSELL_EXIT_PERSIST_MODE", "async", "STREAM_LASERSELL_EXIT"},
		{"STREAM_LASERSELL_EXIT_MAX_AGE", "forever", "STREAM_LASERSELL_EXIT_MAX_AGE"},
		{"LASERSELL_TARGET_PROFIT_PCT", "lots", "LASERSELL_TARGET_PROFIT_PCT"},
		{"OPENSTREAM_ROBOTS", "arm1=", "OPENSTREAM_ROBOTS"},
		{"CONNECTOR_SOURCES", "kafka", "CONNECTOR_SOURCES"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			t.Setenv("CONNECTOR_HTTP_ADDR", "")
			err := dispatch(context.Background(), []string{"run"}, &bytes.Buffer{})
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("want a configuration error, got %v", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") > 0 {
				t.Fatalf("error %q should be one line naming %s", msg, tc.want)
			}
		})
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	t.Setenv("LASERSELL_API_KEY", "sk-very-secret-value")
	t.Setenv("LASERSELL_TARGET_PROFIT_PCT", "-1") // invalid: the error must not echo the key
	t.Setenv("CONNECTOR_HTTP_ADDR", "")
	err := dispatch(context.Background(), []string{"run"}, &bytes.Buffer{})
	if err == nil || strings.Contains(err.Error(), "sk-very-secret-value") {
		t.Fatalf("error %v", err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSims starts a LaserSell simulator with cfg and an Open Stream robot
// with the defaults, both on free loopback ports, stopped at cleanup.
func startSims(t testing.TB, cfg lssim.Config) (ls *lssim.Server, lsURL string, robot *ossim.Server, robotAddr string) {
	t.Helper()
	ls = lssim.New(cfg, zerolog.Nop())
	lsURL, err := ls.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ls.Close)
	robot = ossim.New(ossim.DefaultConfig(), zerolog.Nop())
	robotAddr, err = robot.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = robot.Close() })
	return ls, lsURL, robot, robotAddr
}

// startTestNATS starts an embedded JetStream server on a free port and a
// client connection to it, stopped at cleanup.
func startTestNATS(t testing.TB) (*embednats.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return srv, nc, js
}

// The real `connector run` wiring, end to end: environment -> embedded NATS ->
// both sources against their simulators -> JetStream; a command over NATS; a
// graceful shutdown that says goodbye to the robot.
func TestRunEndToEnd(t *testing.T) {
	ls := lssim.DefaultConfig()
	ls.APIKey = "e2e-key"
	ls.AutoPositions = 1
	_, lsURL, robot, robotAddr := startSims(t, ls)

	natsAddr := freePort(t)
	for k, v := range map[string]string{
		"CONNECTOR_NATS_LISTEN": natsAddr, "CONNECTOR_NATS_STORE_DIR": t.TempDir(), "CONNECTOR_HTTP_ADDR": "",
		"LOG_LEVEL": "warn", "LASERSELL_URL": lsURL, "LASERSELL_API_KEY": "e2e-key", "LASERSELL_SESSION": "e2e",
		"LASERSELL_WALLETS": "E2EWallet1", "LASERSELL_TARGET_PROFIT_PCT": "5",
		"OPENSTREAM_ROBOTS": "arm=" + robotAddr, "OPENSTREAM_MONITORS": "arm/joints=/project/robot/joints/joint_states@10ms",
	} {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		done <- dispatch(ctx, []string{"run"}, &bytes.Buffer{})
	}()
	t.Cleanup(func() {
		cancel()
		<-exited
	})

	var nc *nats.Conn
	deadline := time.Now().Add(10 * time.Second)
	for nc == nil {
		if c, err := nats.Connect("nats://" + natsAddr); err == nil {
			nc = c
		} else if time.Now().After(deadline) {
			t.Fatalf("embedded NATS never came up: %v", err)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	count := func(stream, filter string) uint64 {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			return 0
		}
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(filter))
		if err != nil {
			return 0
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		return n
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("hello_ok in LASERSELL_EVENTS", func() bool { return count(subjects.StreamLaserSellEvents, "lasersell.e2e.event.hello_ok.>") > 0 })
	waitFor("position_opened in LASERSELL_EVENTS", func() bool {
		return count(subjects.StreamLaserSellEvents, "lasersell.e2e.event.position_opened.>") > 0
	})
	waitFor("MONITOR data in OPENSTREAM_DATA", func() bool { return count(subjects.StreamOpenStreamData, "openstream.arm.data.joints") > 10 })

	reply, err := nc.Request(subjects.Command("lasersell", "e2e", "update_strategy"), []byte(`{"strategy":{"target_profit_pct":9}}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r struct{ OK bool }
	if err := json.Unmarshal(reply.Data, &r); err != nil || !r.OK {
		t.Fatalf("update_strategy reply %s", reply.Data)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop")
	}
	stopped := false
	for _, c := range robot.Received() {
		if c.Cmd == "STOP" && strings.Contains(string(c.Raw), `"session"`) {
			stopped = true
		}
	}
	if !stopped {
		t.Fatal("graceful shutdown did not send STOP session to the robot")
	}
}

// STREAM_<NAME>_PERSIST_MODE reaches the stream's retention (in any case);
// unset, every stream keeps nats-server's default mode.
func TestStreamPersistModeIsRead(t *testing.T) {
	t.Setenv("STREAM_LASERSELL_PNL_PERSIST_MODE", "Async")
	streams, err := retention(builtinKinds())
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range subjects.Streams(subjectKinds(builtinKinds())...) {
		want := connector.PersistDefault
		if spec.Name == subjects.StreamLaserSellPnL {
			want = connector.PersistAsync
		}
		if got := streams(spec).Persist; got != want {
			t.Errorf("stream %s: persist mode %q, want %q", spec.Name, got, want)
		}
	}
}
