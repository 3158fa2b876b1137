package lasersell

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// BenchmarkReconnectTLS measures what TLS adds to a LaserSell reconnect:
// two sessions of one runtime, one against a ws:// simulator and one against
// a wss:// simulator (the testpki server certificate, the CA in
// LASERSELL_CA_FILE), reconnected in interleaved rounds (ws then wss, then
// wss then ws, ...) so that background load hits both alike. Each round
// drops the session's connection at the simulator (TCP close) and times:
//
//	reconnect  from the drop to the connected status of the new connection
//	           (its hello_ok): detection, the 1 ms backoff, TCP, TLS, the
//	           upgrade and hello_ok
//	connect    from the connecting status to the connected one: the dial
//	           alone (TCP, TLS, upgrade, hello_ok)
//
// Times are the connector's own status timestamps. BENCH_TLS_ROUNDS sets the
// rounds per scheme (default 40). Run:
//
//	go test -run '^$' -bench ReconnectTLS -benchtime 1x ./connector/lasersell/
func BenchmarkReconnectTLS(b *testing.B) {
	rounds := 40
	if v := os.Getenv("BENCH_TLS_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BENCH_TLS_ROUNDS=%q: want a positive number", v)
		}
		rounds = n
	}
	set := newPKI(b)
	type scheme struct {
		name      string
		sim       *sim.Server
		reconnect []time.Duration
		connect   []time.Duration
	}
	schemes := []*scheme{{name: "ws"}, {name: "wss"}}
	var sessions []connector.Session
	for _, s := range schemes {
		simCfg := sim.Config{APIKey: testKey}
		if s.name == "wss" {
			simCfg.TLSCert, simCfg.TLSKey = set.Server.CertFile, set.Server.KeyFile
		}
		s.sim = sim.New(simCfg, zerolog.Nop())
		if _, err := s.sim.Start("127.0.0.1:0"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(s.sim.Close)
		cfg := testConfig(s.sim.URL())
		cfg.Session = s.name
		if s.name == "wss" {
			cfg.CAFile = set.CA.CertFile
		}
		// Every reconnect waits the same 1 ms, whatever the backoff state.
		cfg.BackoffBase, cfg.BackoffMax = time.Millisecond, time.Millisecond
		sessions = append(sessions, NewSession(cfg))
	}

	env := connectortest.Start(b, connectortest.Options{CommandTimeout: 5 * time.Second})
	replaceRuntime(b, env, zerolog.Nop()) // a log line per reconnect would be most of the output
	events := make(chan *nats.Msg, 4096)
	sub, err := env.Conn.ChanSubscribe("lasersell.*.status", events)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	env.Run(sessions...)

	// next returns the time of the first status of session in state stamped
	// at or after since.
	next := func(session, state string, since time.Time) time.Time {
		b.Helper()
		timeout := time.NewTimer(10 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case m := <-events:
				var doc struct{ Session, State, Time string }
				if err := json.Unmarshal(m.Data, &doc); err != nil {
					b.Fatal(err)
				}
				at, err := time.Parse(time.RFC3339Nano, doc.Time)
				if err != nil {
					b.Fatal(err)
				}
				if doc.Session == session && doc.State == state && !at.Before(since) {
					return at
				}
			case <-timeout.C:
				b.Fatalf("no %s status of session %s", state, session)
			}
		}
	}
	// established waits until the simulator's newest connection of s has the
	// configure: hello_ok went out first (server-first), the session is up.
	established := func(s *scheme) {
		b.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n := s.sim.Connections()
		if _, err := s.sim.WaitFor(ctx, func(f sim.ClientFrame) bool { return f.Conn >= n && f.Type == typeConfigure }); err != nil {
			b.Fatalf("%s: no configure on connection %d: %v", s.name, n, err)
		}
	}
	for _, s := range schemes {
		next(s.name, connector.StateConnected, time.Time{})
		established(s)
	}

	b.ResetTimer()
	for i := range rounds {
		order := schemes
		if i%2 == 1 {
			order = []*scheme{schemes[1], schemes[0]}
		}
		for _, s := range order {
			before := s.sim.Connections()
			dropped := time.Now()
			if n := s.sim.DropConnections(); n != 1 {
				b.Fatalf("%s: dropped %d connections, want 1", s.name, n)
			}
			connecting := next(s.name, connector.StateConnecting, dropped)
			connected := next(s.name, connector.StateConnected, dropped)
			s.reconnect = append(s.reconnect, connected.Sub(dropped))
			s.connect = append(s.connect, connected.Sub(connecting))
			established(s)
			if got := s.sim.Connections(); got != before+1 {
				b.Fatalf("%s: %d connections after one reconnect, want %d", s.name, got, before+1)
			}
		}
	}
	b.StopTimer()

	var lines strings.Builder
	result := func(name string, v float64) { fmt.Fprintf(&lines, "RESULT %s %.3f\n", name, v) }
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	ws, wss := schemes[0], schemes[1]
	for _, what := range []string{"reconnect", "connect"} {
		pick := func(s *scheme) []time.Duration {
			if what == "reconnect" {
				return s.reconnect
			}
			return s.connect
		}
		for _, s := range schemes {
			result(fmt.Sprintf("lasersell_%s_%s_p50_ms", what, s.name), ms(quantile(pick(s), 0.5)))
			result(fmt.Sprintf("lasersell_%s_%s_p99_ms", what, s.name), ms(quantile(pick(s), 0.99)))
		}
		p50 := float64(quantile(pick(wss), 0.5)) / float64(quantile(pick(ws), 0.5))
		p99 := float64(quantile(pick(wss), 0.99)) / float64(quantile(pick(ws), 0.99))
		result(fmt.Sprintf("lasersell_%s_wss_over_ws_p50", what), p50)
		result(fmt.Sprintf("lasersell_%s_wss_over_ws_p99", what), p99)
		b.ReportMetric(p50, what+"-wss/ws-p50")
	}
	result("lasersell_reconnect_rounds_per_scheme", float64(rounds))
	fmt.Print(lines.String())
}

// quantile returns the q-quantile of ds by nearest rank (q = 0.99 of 40
// samples is the largest).
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*q+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
