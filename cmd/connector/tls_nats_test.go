package main

// NATS over TLS with client certificates (mutual TLS): the connector and
// `connector replay` connect with NATS_CA, NATS_CERT and NATS_KEY to a real
// server configured by deploy/nats/tls.conf, and every TLS mistake stops
// start-up with one line naming the variable.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/internal/testpki"
	"github.com/jetbridge/connector/subjects"
)

// newPKI writes a fresh testpki.Set for one test.
func newPKI(t *testing.T) *testpki.Set {
	t.Helper()
	set, err := testpki.NewSet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// startTLSNATS starts a JetStream server configured by deploy/nats/tls.conf,
// serving the serving pair and verifying clients against set's CA, on addr
// ("127.0.0.1:0" for any port) with its store in storeDir ("" for a new one).
func startTLSNATS(t *testing.T, set *testpki.Set, serving testpki.Pair, addr, storeDir string) *server.Server {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/nats/tls.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(raw)
	for from, to := range map[string]string{
		"/etc/nats/tls/server.pem": serving.CertFile, "/etc/nats/tls/server-key.pem": serving.KeyFile, "/etc/nats/tls/ca.pem": set.CA.CertFile,
	} {
		if !strings.Contains(conf, `"`+from+`"`) {
			t.Fatalf("deploy/nats/tls.conf no longer names %s", from)
		}
		conf = strings.ReplaceAll(conf, `"`+from+`"`, strconv.Quote(to))
	}
	opts := &server.Options{}
	if err := opts.ProcessConfigString(conf); err != nil {
		t.Fatalf("deploy/nats/tls.conf: %v", err)
	}
	if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatal("deploy/nats/tls.conf does not require client certificates")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port = host, server.RANDOM_PORT
	if port != "0" {
		if opts.Port, err = strconv.Atoi(port); err != nil {
			t.Fatal(err)
		}
	}
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	opts.JetStream, opts.StoreDir, opts.NoSigs = true, storeDir, true
	return startNATSServer(t, opts)
}

// tlsURL is the server's client URL with the tls scheme.
func tlsURL(ns *server.Server) string {
	return "tls://" + ns.Addr().String()
}

// tlsEnv is the connector's TLS configuration for set's client certificate.
func tlsEnv(set *testpki.Set) map[string]string {
	return map[string]string{"NATS_CA": set.CA.CertFile, "NATS_CERT": set.Client.CertFile, "NATS_KEY": set.Client.KeyFile}
}

// tlsClient connects the test itself with set's client certificate.
func tlsClient(t *testing.T, url string, set *testpki.Set) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connectJS(t, url, nats.RootCAs(set.CA.CertFile), nats.ClientCert(set.Client.CertFile, set.Client.KeyFile))
}

// The connector runs over mutual TLS: both of its connections use TLS 1.2+
// with its client certificate, exits are stored and commands answered, and
// `connector replay` reads them back over TLS. When the server comes back
// with an expired certificate, the connector keeps running, says why it
// cannot reconnect (naming the variable), and resumes once the server has a
// valid certificate again.
func TestNATSOverMutualTLS(t *testing.T) {
	set := newPKI(t)
	cfg := lssim.DefaultConfig()
	cfg.APIKey, cfg.AutoPositions, cfg.ExitEvery, cfg.PnLRate = "tls-key", 1, 100*time.Millisecond, 20
	_, lsURL, _, robotAddr := startSims(t, cfg)
	addr, store := freeLoopbackAddr(t), t.TempDir()
	ns := startTLSNATS(t, set, set.Server, addr, store)
	url := tlsURL(ns)
	nc, js := tlsClient(t, url, set)

	env := map[string]string{
		"NATS_URL": url, "CONNECTOR_HTTP_ADDR": "", "LOG_FORMAT": "json",
		"CONNECTOR_ACK_TIMEOUT": "1s", "CONNECTOR_DRAIN_TIMEOUT": "2s",
		"LASERSELL_URL": lsURL, "LASERSELL_API_KEY": "tls-key", "LASERSELL_SESSION": "tls",
		"LASERSELL_WALLETS": "TlsWallet11111111111111111111111111111111", "LASERSELL_TARGET_PROFIT_PCT": "5",
		"OPENSTREAM_ROBOTS": "arm=" + robotAddr, "OPENSTREAM_MONITORS": "arm/pose=/project/robot/po_cur@50ms",
	}
	for k, v := range tlsEnv(set) {
		env[k] = v
	}
	p := startConnectorProc(t, "connector", env)
	waitUntil(t, 20*time.Second, "exit signals stored over TLS", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n < 3 {
			return fmt.Errorf("%d exit signals", n)
		}
		return nil
	})
	if r := requestCommand(t, nc, subjects.Command(subjects.KindLaserSell, "tls", "ping"), `{}`, 10*time.Second); !r.OK {
		t.Fatalf("ping over TLS: %s", r.raw)
	}
	connz, err := ns.Connz(&server.ConnzOptions{Username: true})
	if err != nil {
		t.Fatal(err)
	}
	var connectorConns int
	for _, c := range connz.Conns {
		if !strings.HasPrefix(c.Name, "connector ") {
			continue
		}
		connectorConns++
		if c.TLSVersion != "1.2" && c.TLSVersion != "1.3" {
			t.Errorf("connection %q: TLS version %q", c.Name, c.TLSVersion)
		}
	}
	if connectorConns != 2 {
		t.Errorf("%d connector connections on the TLS server, want 2 (high, low)", connectorConns)
	}

	// connector replay, same variables.
	replayEnv := map[string]string{"NATS_URL": url}
	for k, v := range tlsEnv(set) {
		replayEnv[k] = v
	}
	out, errOut, status := runCLI(t, replayEnv, "replay", "--subject", "lasersell.tls.exit.*", "--since", "1m", "--progress", "off")
	if status != 0 || strings.Count(out, "\n") < 3 || !strings.Contains(out, `"subject":"lasersell.tls.exit.`) {
		t.Fatalf("replay over TLS: status %d, stderr %q, %d lines", status, errOut, strings.Count(out, "\n"))
	}

	// The server comes back with an expired certificate: retried, explained.
	exits := lastSeq(js, subjects.StreamLaserSellExit)
	ns.Shutdown()
	ns.WaitForShutdown()
	expired := startTLSNATS(t, set, set.Expired, addr, store)
	waitUntil(t, 15*time.Second, "the connector to explain the expired server certificate", func() error {
		if !p.running() {
			return fmt.Errorf("connector exited: %s", tail(p.output(), 2000))
		}
		if !bytes.Contains(p.output(), []byte("cannot connect to NATS over TLS; retrying")) ||
			!bytes.Contains(p.output(), []byte("NATS_URL: the NATS server's certificate has expired")) {
			return errNotYet
		}
		return nil
	})
	expired.Shutdown()
	expired.WaitForShutdown()
	startTLSNATS(t, set, set.Server, addr, store)
	waitUntil(t, 20*time.Second, "exit signals stored again once the certificate is valid", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n < exits+3 {
			return fmt.Errorf("%d new exit signals", n-exits)
		}
		return nil
	})
	if err := p.stop(15 * time.Second); err != nil {
		t.Errorf("connector did not stop cleanly: %v", err)
	}
	p.checkNoRace()
}

// Every TLS mistake stops `connector run` and `connector replay` at once with
// exit status 2 and one line on stderr naming the variable to fix: TLS
// verification failures do not go away by retrying.
func TestNATSTLSMistakesStopStartup(t *testing.T) {
	set := newPKI(t)
	good := startTLSNATS(t, set, set.Server, "127.0.0.1:0", "")
	expired := startTLSNATS(t, set, set.Expired, "127.0.0.1:0", "")
	wrongHost := startTLSNATS(t, set, set.WrongHost, "127.0.0.1:0", "")
	plain, _, _ := startTestNATS(t)
	stranger, err := set.OtherCA.Issue(testpki.Spec{Name: "stranger", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "absent-key.pem")
	// with returns the client TLS variables with some replaced ("" removes one).
	with := func(kv ...string) map[string]string {
		env := tlsEnv(set)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(env, kv[i])
			} else {
				env[kv[i]] = kv[i+1]
			}
		}
		return env
	}
	for _, tc := range []struct {
		name, url string
		env       map[string]string
		want      []string
		replay    bool // also run connector replay with it
	}{
		{"wrong_ca", tlsURL(good), with("NATS_CA", set.OtherCA.CertFile), []string{"NATS_CA: ", "unknown authority"}, true},
		{"no_client_certificate", tlsURL(good), with("NATS_CERT", "", "NATS_KEY", ""), []string{"NATS_CERT/NATS_KEY: the NATS server requires a client certificate"}, true},
		{"tls_url_without_nats_ca", tlsURL(good), map[string]string{}, []string{"NATS_CA is not set", "unknown authority"}, true},
		{"client_certificate_of_another_ca", tlsURL(good), with("NATS_CERT", stranger.CertFile, "NATS_KEY", stranger.KeyFile), []string{"NATS_CERT: the NATS server refused the client certificate"}, false},
		{"expired_server_certificate", tlsURL(expired), tlsEnv(set), []string{"NATS_URL: the NATS server's certificate has expired"}, true},
		{"server_certificate_for_another_host", tlsURL(wrongHost), tlsEnv(set), []string{"NATS_URL: the NATS server's certificate is not valid for the host"}, false},
		{"tls_to_a_plain_server", plain.URL(), tlsEnv(set), []string{"NATS_CA/NATS_CERT ask for TLS, but the NATS server does not offer it"}, false},
		{"ca_file_not_pem", tlsURL(good), with("NATS_CA", notPEM), []string{"NATS_CA=", "holds no PEM certificate"}, false},
		{"key_file_missing", tlsURL(good), with("NATS_KEY", missing), []string{"NATS_KEY=", "cannot be read"}, false},
		{"key_of_another_certificate", tlsURL(good), with("NATS_KEY", set.Server.KeyFile), []string{"NATS_CERT=", "NATS_KEY=", "private key does not match"}, false},
		{"tls_without_nats_url", "", tlsEnv(set), []string{"NATS_CA/NATS_CERT are set but NATS_URL is empty"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"NATS_URL": tc.url, "CONNECTOR_HTTP_ADDR": "", "LOG_FORMAT": "json", "OPENSTREAM_ROBOTS": "arm=127.0.0.1:9"}
			for k, v := range tc.env {
				env[k] = v
			}
			runs := [][]string{{"run"}}
			if tc.replay {
				runs = append(runs, []string{"replay", "--subject", "lasersell.x.exit.*", "--since", "1m"})
			}
			for _, args := range runs {
				start := time.Now()
				stdout, stderr, status := runCLI(t, env, args...)
				line := strings.TrimSpace(stderr)
				t.Logf("connector %s: exit %d after %s: %s", args[0], status, time.Since(start).Round(time.Millisecond), line)
				if status != 2 || strings.Contains(line, "\n") {
					t.Errorf("connector %s: exit status %d, stderr %q; want 2 and one line", args[0], status, stderr)
				}
				for _, w := range tc.want {
					if !strings.Contains(line, w) {
						t.Errorf("connector %s: %q does not say %q", args[0], line, w)
					}
				}
				if key := keySecrets(t, set.Client.KeyFile)[0]; strings.Contains(stdout+stderr, key[:40]) {
					t.Errorf("connector %s printed the client key", args[0])
				}
			}
		})
	}
}
