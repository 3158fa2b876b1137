package lasersell

// wss:// to the upstream against the real simulator serving TLS with the
// certificates of internal/testpki, through the loopback fault proxy: the
// happy path with LASERSELL_CA_FILE, and every certificate failure (unknown
// authority, wrong host, expired, a server that does not speak TLS) ending
// in reason code tls, counted, retried on the slow schedule, with no
// WebSocket session (and so no API key) ever reaching the server.

import (
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/internal/testpki"
)

// newPKI writes a fresh set of test certificates.
func newPKI(t testing.TB) *testpki.Set {
	t.Helper()
	set, err := testpki.NewSet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// startTLSRig starts the simulator serving wss:// with pair and the source
// through a fault proxy, trusting caFile besides the system roots ("": the
// system roots alone).
func startTLSRig(t *testing.T, pair testpki.Pair, caFile string, mut func(*Config)) *faultRig {
	t.Helper()
	return startFaultRig(t, sim.Config{TLSCert: pair.CertFile, TLSKey: pair.KeyFile}, func(c *Config) {
		c.CAFile = caFile
		if mut != nil {
			mut(c)
		}
	})
}

// keyNowhere requires that the API key appears in no log line and no status.
func (r *faultRig) keyNowhere() {
	r.t.Helper()
	if strings.Contains(r.logs.String(), testKey) {
		r.t.Fatal("the API key appears in the logs")
	}
	for _, m := range r.statuses() {
		if strings.Contains(string(m.Data()), testKey) {
			r.t.Fatal("the API key appears in a status event")
		}
	}
}

// Over wss:// with the private CA in LASERSELL_CA_FILE the session works as
// over ws://: configure sent, events stored, and a dropped connection comes
// back over a new TLS handshake (one per connection).
func TestTLSHappyPathWithCAFile(t *testing.T) {
	set := newPKI(t)
	r := startTLSRig(t, set.Server, set.CA.CertFile, nil)
	st := r.waitConnected()
	if detail, _ := st["detail"].(map[string]any); !strings.HasPrefix(detail["url"].(string), "wss://127.0.0.1:") {
		t.Fatalf("connected status url %v, want wss://", st["detail"])
	}
	_, body := waitFrame(t, r.sim, 1, typeConfigure, nil)
	if got := wallets(body); got != walletA {
		t.Fatalf("configure wallets %q, want %q", got, walletA)
	}
	r.configuredConn()
	pos := r.sim.OpenPosition(walletA, mintA, 1000)
	r.sendExit(pos, 1)

	cut := time.Now()
	r.proxy.Cut(false)
	up := r.waitStatus(cut, connector.StateConnected, "", wait)
	r.configuredConn()
	r.sendExit(pos, 2)
	stats := r.sim.Stats()
	if stats.Connections < 2 || stats.TLSHellos != uint64(stats.Connections) {
		t.Fatalf("%d sessions over %d TLS handshakes, want one handshake per session (at least 2)", stats.Connections, stats.TLSHellos)
	}
	r.positionOpenedOnce(pos)
	r.keyNowhere()
	t.Logf("measured: reconnected over TLS %s after the cut", up.At.Sub(cut))
}

// Every certificate failure ends the dial with reason code tls and a human
// reason naming the cause, is counted in the reconnect metric under tls, and
// is retried on the slow schedule (the delays keep doubling past
// LASERSELL_BACKOFF_MAX, up to 15 times it) rather than in a loop. No
// WebSocket session opens: the server never sees an upgrade request.
func TestTLSCertificateFailuresRetrySlowly(t *testing.T) {
	set := newPKI(t)
	for _, tc := range []struct {
		name   string
		sim    sim.Config
		caFile string
		wss    bool // rewrite a ws:// simulator's URL to wss://
		reason string
	}{
		{"unknown authority, system roots only", sim.Config{TLSCert: set.Server.CertFile, TLSKey: set.Server.KeyFile}, "", false, "not signed by a trusted authority"},
		{"unknown authority, another CA trusted", sim.Config{TLSCert: set.Server.CertFile, TLSKey: set.Server.KeyFile}, set.OtherCA.CertFile, false, "not signed by a trusted authority"},
		{"wrong host", sim.Config{TLSCert: set.WrongHost.CertFile, TLSKey: set.WrongHost.KeyFile}, set.CA.CertFile, false, "not valid for this host name"},
		{"expired", sim.Config{TLSCert: set.Expired.CertFile, TLSKey: set.Expired.KeyFile}, set.CA.CertFile, false, "has expired"},
		{"server does not speak TLS", sim.Config{}, "", true, "did not answer the TLS handshake with TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startFaultRig(t, tc.sim, func(c *Config) {
				c.CAFile = tc.caFile
				if tc.wss {
					c.URL = "wss://" + strings.TrimPrefix(c.URL, "ws://")
				}
				c.BackoffBase = 10 * time.Millisecond
				c.BackoffMax = 50 * time.Millisecond // slow cap: 750 ms
			})
			const n = 5
			rounds := r.waitRounds(n, 4*wait)
			// The slow schedule doubles past the 50 ms cap of the plain one
			// (10, 20, 40, 50, 50 ms).
			want := []int64{10, 20, 40, 80, 160}
			for i, rd := range rounds[:n] {
				if rd.Code != connector.ReasonTLS || rd.Hello {
					t.Fatalf("round %d: %+v, want reason code tls before any hello_ok", i, rd)
				}
				if rd.BackoffMS != want[i] {
					t.Fatalf("backoffs %v ms, want the slow schedule %v", backoffsOf(rounds), want)
				}
				if i > 0 && rd.At.Sub(rounds[i-1].At) < time.Duration(want[i-1])*time.Millisecond {
					t.Fatalf("attempt %d came %s after the previous one, before its %d ms backoff", i+1, rd.At.Sub(rounds[i-1].At), want[i-1])
				}
			}
			stats := r.sim.Stats()
			attempts := r.proxy.Accepted()
			if attempts < n || attempts > int64(len(r.rounds()))+2 {
				t.Fatalf("%d connections for %d reconnects: want one attempt per reconnect", attempts, len(r.rounds()))
			}
			if stats.Connections != 0 || stats.Refused != 0 {
				t.Fatalf("the server saw %d sessions and %d refused upgrades: an HTTP request got through", stats.Connections, stats.Refused)
			}
			if !tc.wss && stats.TLSHellos < n {
				t.Fatalf("the server saw %d TLS handshakes, want at least %d", stats.TLSHellos, n)
			}
			if got := r.reconnects(connector.ReasonTLS); got < n {
				t.Fatalf("reconnects{reason=tls} = %v, want >= %d", got, n)
			}
			var reason string
			for _, st := range r.timeline() {
				if st.State == connector.StateDisconnected && st.Code == connector.ReasonTLS {
					reason = st.Reason
					break
				}
			}
			if !strings.HasPrefix(reason, "TLS: ") || !strings.Contains(reason, tc.reason) {
				t.Fatalf("status reason %q, want it to say %q", reason, tc.reason)
			}
			r.keyNowhere()
			t.Logf("measured: %q; backoffs %v ms; %d attempts", reason, backoffsOf(rounds), attempts)
		})
	}
}
