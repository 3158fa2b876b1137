package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// secretAuth is the test NATS server's authentication: a user/password or a
// token, counting accepted and rejected attempts so a test can wait for a
// refused connector without sleeping.
type secretAuth struct {
	user, password, token string
	accepted, rejected    atomic.Int64
}

func (a *secretAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	ok := o.Token == a.token && o.Username == a.user && o.Password == a.password
	if ok {
		a.accepted.Add(1)
	} else {
		a.rejected.Add(1)
	}
	return ok
}

// startAuthNATS starts a JetStream server on addr ("127.0.0.1:0" for any port)
// with its store in storeDir ("" for a new one) that requires auth.
func startAuthNATS(t *testing.T, addr, storeDir string, auth *secretAuth) *server.Server {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil {
		t.Fatal(err)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	return startNATSServer(t, &server.Options{Host: host, Port: p, JetStream: true, StoreDir: storeDir,
		NoSigs: true, CustomClientAuthentication: auth})
}

func startNATSServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("NATS server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// connectJS connects the test itself to url (reconnecting forever, every
// 50 ms) and returns the connection and its JetStream, closed at cleanup.
func connectJS(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// operatorNATS starts a server in decentralized (JWT) mode with one
// JetStream-enabled account, and writes a creds file for a user of it.
// It returns the server, the creds file path and the file's secret parts
// (user JWT and seed).
func operatorNATS(t *testing.T) (*server.Server, string, []string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	opKP, err := nkeys.CreateOperator()
	must(err)
	opPub, err := opKP.PublicKey()
	must(err)
	sysKP, err := nkeys.CreateAccount()
	must(err)
	sysPub, err := sysKP.PublicKey()
	must(err)
	accKP, err := nkeys.CreateAccount()
	must(err)
	accPub, err := accKP.PublicKey()
	must(err)
	userKP, err := nkeys.CreateUser()
	must(err)
	userPub, err := userKP.PublicKey()
	must(err)
	userSeed, err := userKP.Seed()
	must(err)

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "secrets-test"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(opKP)
	must(err)
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	must(err)
	sysJWT, err := jwt.NewAccountClaims(sysPub).Encode(opKP)
	must(err)
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = "connector"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accJWT, err := ac.Encode(opKP)
	must(err)
	uc := jwt.NewUserClaims(userPub)
	uc.Name = "connector"
	userJWT, err := uc.Encode(accKP)
	must(err)
	creds, err := jwt.FormatUserConfig(userJWT, userSeed)
	must(err)
	path := filepath.Join(t.TempDir(), "connector.creds")
	must(os.WriteFile(path, creds, 0o600))

	resolver := &server.MemAccResolver{}
	must(resolver.Store(sysPub, sysJWT))
	must(resolver.Store(accPub, accJWT))
	ns := startNATSServer(t, &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, TrustedOperators: []*jwt.OperatorClaims{opClaims},
		AccountResolver: resolver, SystemAccount: sysPub})
	return ns, path, []string{userJWT, string(userSeed)}
}

// fakeNATS accepts TCP connections, greets them like a NATS server that wants
// authentication, and closes them: a server the connector can reach but never
// use. It counts the attempts.
func fakeNATS(t *testing.T, addr string) (*atomic.Int64, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			_, _ = c.Write([]byte(`INFO {"server_id":"fake","version":"2.10.0","proto":1,"auth_required":true,"nonce":"bm9uY2Vub25jZQ","max_payload":1048576}` + "\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, _ = bufio.NewReader(c).ReadString('\n')
			_ = c.Close()
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { _ = ln.Close(); wg.Wait() }) }
	t.Cleanup(stop)
	return &attempts, stop
}

// surface is one place a secret must never appear.
type surface struct {
	where string
	data  []byte
}

// secretScan collects what one connector run exposed.
type secretScan struct {
	mu       sync.Mutex
	surfaces []surface
}

func (s *secretScan) add(where string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.surfaces = append(s.surfaces, surface{where, bytes.Clone(data)})
}

// tap records every message on every subject of the client's account:
// events, status, KV writes, JetStream API traffic, command replies.
func (s *secretScan) tap(t *testing.T, nc *nats.Conn) {
	t.Helper()
	var n atomic.Int64
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		if n.Add(1) > 200000 { // bound memory; the scenarios stay far below
			return
		}
		var hdr bytes.Buffer
		_ = http.Header(m.Header).Write(&hdr)
		s.add("NATS message on "+m.Subject+" (tapped live)", append(append([]byte(m.Subject+"\n"), hdr.Bytes()...), m.Data...))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// streams records every message of every stream (KV buckets included).
func (s *secretScan) streams(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	names := streamNames(t, js)
	t.Logf("scanning streams %v", names)
	for _, name := range names {
		for _, m := range readStream(t, js, name) {
			var hdr bytes.Buffer
			_ = http.Header(m.Header).Write(&hdr)
			s.add(fmt.Sprintf("stream %s seq %d subject %s", name, m.Seq, m.Subject), append(append([]byte(m.Subject+"\n"), hdr.Bytes()...), m.Data...))
		}
	}
}

// http records the connector's HTTP endpoints.
func (s *secretScan) http(t *testing.T, addr string) {
	t.Helper()
	for _, path := range []string{"/metrics", "/statusz", "/healthz", "/status", "/"} {
		body, err := httpBody("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		s.add("HTTP GET "+path, body)
	}
}

// leaks describes every surface holding a secret, or its base64 (HTTP basic
// auth, JWT segments), with the text around it.
func (s *secretScan) leaks(secrets []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, sf := range s.surfaces {
		for _, sec := range secrets {
			// One report per surface and secret, whichever form it has.
			for _, form := range []string{sec, base64.StdEncoding.EncodeToString([]byte(sec)), base64.RawURLEncoding.EncodeToString([]byte(sec))} {
				if i := bytes.Index(sf.data, []byte(form)); i >= 0 {
					lo, hi := max(0, i-200), min(len(sf.data), i+len(form)+100)
					out = append(out, fmt.Sprintf("%s: %q", sf.where, sf.data[lo:hi]))
					break
				}
			}
		}
	}
	return out
}

// check fails the test for every leak.
func (s *secretScan) check(t *testing.T, secrets []string) {
	t.Helper()
	found := s.leaks(secrets)
	for i, l := range found {
		if i == 20 {
			t.Errorf("... and %d more leaks", len(found)-i)
			break
		}
		t.Errorf("SECRET LEAK in %s", l)
	}
	if len(found) == 0 {
		s.mu.Lock()
		t.Logf("no secret in %d surfaces", len(s.surfaces))
		s.mu.Unlock()
	}
}

// The scanner itself finds a secret, plain or base64-encoded, wherever it is.
func TestSecretScanFindsPlantedSecrets(t *testing.T) {
	scan := &secretScan{}
	scan.add("clean", []byte(`{"level":"info","message":"connected"}`))
	scan.add("plain", []byte(`{"level":"trace","header":"x-api-key: k-123-secret"}`))
	scan.add("basic auth", []byte("Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte("pw-456-secret"))))
	got := scan.leaks([]string{"k-123-secret", "pw-456-secret", "never-there"})
	if len(got) != 2 || !strings.HasPrefix(got[0], "plain:") || !strings.HasPrefix(got[1], "basic auth:") {
		t.Fatalf("leaks = %q, want the plain and the basic auth surfaces", got)
	}
}

// secretsRig is the upstreams every scenario talks to.
type secretsRig struct {
	ls        *lssim.Server
	lsURL     string
	robotAddr string
	apiKey    string
}

func newSecretsRig(t *testing.T, apiKey string) *secretsRig {
	t.Helper()
	cfg := lssim.DefaultConfig()
	cfg.APIKey = apiKey
	cfg.AutoPositions = 1
	cfg.PnLRate = 20
	cfg.ExitEvery = 100 * time.Millisecond
	cfg.EnforceSessionLimit = false
	ls, lsURL, _, robotAddr := startSims(t, cfg)
	return &secretsRig{ls: ls, lsURL: lsURL, robotAddr: robotAddr, apiKey: apiKey}
}

// baseEnv is a connector configuration at trace level with JSON logs and
// short timeouts, without any credential.
func (r *secretsRig) baseEnv(natsURL, httpAddr, lsURL string) map[string]string {
	return map[string]string{
		"NATS_URL": natsURL, "CONNECTOR_HTTP_ADDR": httpAddr, "LOG_LEVEL": "trace", "LOG_FORMAT": "json",
		"CONNECTOR_ACK_TIMEOUT": "1s", "CONNECTOR_DRAIN_TIMEOUT": "2s", "CONNECTOR_COMMAND_TIMEOUT": "2s",
		"LASERSELL_URL": lsURL, "LASERSELL_SESSION": "sec", "LASERSELL_WALLETS": "SecretsWallet1111111111111111111111111111",
		"LASERSELL_TARGET_PROFIT_PCT": "5", "LASERSELL_BACKOFF_BASE": "50ms", "LASERSELL_BACKOFF_MAX": "200ms",
		"LASERSELL_PING_INTERVAL": "200ms", "LASERSELL_PING_TIMEOUT": "1s",
		"OPENSTREAM_ROBOTS": "arm=" + r.robotAddr, "OPENSTREAM_MONITORS": "arm/pose=/project/robot/po_cur@50ms",
	}
}

// commandsExercise sends valid and invalid commands to both sources and
// records every reply.
var commandsExercise = []struct{ kind, name, command, body string }{
	{subjects.KindLaserSell, "sec", "configure", `{"wallet_pubkeys":["SecretsWallet2222222222222222222222222222"],"strategy":{"target_profit_pct":6,"stop_loss_pct":1,"trailing_stop_pct":2}}`},
	{subjects.KindLaserSell, "sec", "configure", `{"wallet_pubkeys":`},
	{subjects.KindLaserSell, "sec", "update_strategy", `{"strategy":{"target_profit_pct":"lots"}}`},
	{subjects.KindLaserSell, "sec", "frobnicate", `{}`},
	{subjects.KindLaserSell, "sec", "close_position", `{"position_id":987654}`},
	{subjects.KindLaserSell, "sec", "request_exit_signal", `{"position_id":1,"token_account":"x"}`},
	{subjects.KindLaserSell, "sec", "ping", `{}`},
	{subjects.KindOpenStream, "arm", "monitor", `{"name":"joints","url":"/project/robot/joints/joint_states","period_ms":20}`},
	{subjects.KindOpenStream, "arm", "monitor", `{"name":"bad","url":"/project/../etc","period_ms":20}`},
	{subjects.KindOpenStream, "arm", "control", `{"url":"/project/robot/motor_on","method":"POST"}`},
	{subjects.KindOpenStream, "arm", "stop", `{"target":"bogus"}`},
	{subjects.KindOpenStream, "arm", "stop", `not json`},
}

func (s *secretScan) commands(t *testing.T, nc *nats.Conn) {
	t.Helper()
	for _, c := range commandsExercise {
		subj := subjects.Command(c.kind, c.name, c.command)
		r := requestCommand(t, nc, subj, c.body, 15*time.Second)
		s.add("reply to "+subj+" "+c.body, r.raw)
	}
}

// runHealthy runs the connector against rig with the given credential
// variables, drives it through streaming and commands, stops it and checks
// every surface for secrets.
func runHealthy(t *testing.T, rig *secretsRig, natsURL string, clientOpts []nats.Option, credEnv map[string]string, secrets []string) {
	t.Helper()
	nc, js := connectJS(t, natsURL, clientOpts...)
	scan := &secretScan{}
	scan.tap(t, nc)
	httpAddr := freeLoopbackAddr(t)
	env := rig.baseEnv(natsURL, httpAddr, rig.lsURL)
	for k, v := range credEnv {
		env[k] = v
	}
	p := startConnectorProc(t, "connector", env)
	scan.commands(t, nc)
	waitUntil(t, 20*time.Second, "exit signals and MONITOR data stored", func() error {
		if n := lastSeq(js, subjects.StreamLaserSellExit); n < 3 {
			return fmt.Errorf("%d exit signals", n)
		}
		if n := lastSeq(js, subjects.StreamOpenStreamData); n < 10 {
			return fmt.Errorf("%d data", n)
		}
		return nil
	})
	scan.http(t, httpAddr)
	if err := p.stop(15 * time.Second); err != nil {
		t.Errorf("connector did not stop cleanly: %v", err)
	}
	p.checkNoRace()
	out := p.output()
	scan.add("connector stdout+stderr", out)
	levels := map[string]int{}
	for _, line := range bytes.Split(out, []byte("\n")) {
		var l struct{ Level string }
		if json.Unmarshal(line, &l) == nil && l.Level != "" {
			levels[l.Level]++
		}
	}
	t.Logf("connector log lines by level: %v", levels)
	scan.streams(t, js)
	scan.check(t, secrets)
}

// randomSecret makes a recognisable secret no other text contains by chance.
func randomSecret(t *testing.T, what string) string {
	t.Helper()
	kp, err := nkeys.CreateUser() // any random source will do; this one is at hand
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return what + "-S3CR3T-" + pub[1:25]
}

// keySecrets are the forms a private key file (NATS_KEY) would take in a
// leak: its PEM body (first), each line of it, and its DER bytes (the scan
// adds the base64 forms).
func keySecrets(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || !strings.Contains(block.Type, "PRIVATE KEY") {
		t.Fatalf("%s holds no PEM private key", path)
	}
	var body strings.Builder
	var lines []string
	for _, line := range strings.Split(string(raw), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "-----") {
			body.WriteString(line)
			lines = append(lines, line)
		}
	}
	return append([]string{body.String(), string(block.Bytes)}, lines...)
}

// TestSecretsNeverExposed runs the real connector process at LOG_LEVEL=trace
// with JSON logs, with every kind of credential and with failures provoked
// around them, and asserts that no secret (nor its base64) appears in its
// stdout/stderr, any NATS message it sent or received, any stream or KV
// bucket (history included), any command reply (valid and invalid commands)
// or its HTTP endpoints. Secrets include the private key file of mutual TLS
// (NATS_KEY): its PEM body, any line of it, its DER bytes.
func TestSecretsNeverExposed(t *testing.T) {
	t.Run("password_and_api_key", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		auth := &secretAuth{user: "connector", password: randomSecret(t, "natspw")}
		ns := startAuthNATS(t, "127.0.0.1:0", "", auth)
		runHealthy(t, rig, ns.ClientURL(), []nats.Option{nats.UserInfo(auth.user, auth.password)},
			map[string]string{"LASERSELL_API_KEY": key, "NATS_USER": auth.user, "NATS_PASSWORD": auth.password},
			[]string{key, auth.password, auth.user + ":" + auth.password})
	})

	t.Run("token_and_api_key_file", func(t *testing.T) {
		key := randomSecret(t, "apikeyfile")
		rig := newSecretsRig(t, key)
		keyFile := filepath.Join(t.TempDir(), "lasersell.key")
		if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		auth := &secretAuth{token: randomSecret(t, "natstoken")}
		ns := startAuthNATS(t, "127.0.0.1:0", "", auth)
		runHealthy(t, rig, ns.ClientURL(), []nats.Option{nats.Token(auth.token)},
			map[string]string{"LASERSELL_API_KEY_FILE": keyFile, "NATS_TOKEN": auth.token},
			[]string{key, auth.token})
	})

	t.Run("creds_file", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		ns, creds, parts := operatorNATS(t)
		runHealthy(t, rig, ns.ClientURL(), []nats.Option{nats.UserCredentials(creds)},
			map[string]string{"LASERSELL_API_KEY": key, "NATS_CREDS": creds},
			append(parts, key))
	})

	t.Run("mutual_tls_key_file", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		set := newPKI(t)
		ns := startTLSNATS(t, set, set.Server, "127.0.0.1:0", "")
		env := tlsEnv(set)
		env["LASERSELL_API_KEY"] = key
		runHealthy(t, rig, tlsURL(ns), []nats.Option{nats.RootCAs(set.CA.CertFile), nats.ClientCert(set.Client.CertFile, set.Client.KeyFile)},
			env, append(keySecrets(t, set.Client.KeyFile), key))
	})

	t.Run("key_file_of_another_certificate", func(t *testing.T) {
		set := newPKI(t)
		ns := startTLSNATS(t, set, set.Server, "127.0.0.1:0", "")
		env := tlsEnv(set)
		env["NATS_KEY"] = set.Server.KeyFile // the server's key: does not match NATS_CERT
		env["NATS_URL"], env["LOG_LEVEL"], env["OPENSTREAM_ROBOTS"] = tlsURL(ns), "trace", "arm=127.0.0.1:9"
		stdout, stderr, status := runCLI(t, env, "run")
		if status != 2 {
			t.Fatalf("exit status %d, want 2 (bad configuration): %s", status, stderr)
		}
		scan := &secretScan{}
		scan.add("connector stdout+stderr", []byte(stdout+stderr))
		scan.check(t, append(keySecrets(t, set.Server.KeyFile), keySecrets(t, set.Client.KeyFile)...))
	})

	t.Run("password_in_url_nats_down_at_start", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		auth := &secretAuth{user: "connector", password: randomSecret(t, "urlpw")}
		addr := freeLoopbackAddr(t)
		attempts, stopFake := fakeNATS(t, addr)
		natsURL := "nats://" + auth.user + ":" + auth.password + "@" + addr
		scan := &secretScan{}
		httpAddr := freeLoopbackAddr(t)
		env := rig.baseEnv(natsURL, httpAddr, rig.lsURL)
		env["LASERSELL_API_KEY"] = key
		p := startConnectorProc(t, "connector", env)
		waitUntil(t, 20*time.Second, "the connector to retry an unusable NATS", func() error {
			if !p.running() {
				return fmt.Errorf("connector exited: %s", p.output())
			}
			if attempts.Load() < 3 {
				return errNotYet
			}
			return nil
		})
		stopFake()
		store := t.TempDir()
		ns := startAuthNATS(t, addr, store, auth)
		nc, js := connectJS(t, ns.ClientURL(), nats.UserInfo(auth.user, auth.password))
		scan.tap(t, nc)
		scan.commands(t, nc)
		waitUntil(t, 20*time.Second, "exit signals stored after NATS came up", func() error {
			if n := lastSeq(js, subjects.StreamLaserSellExit); n < 3 {
				return fmt.Errorf("%d exit signals", n)
			}
			return nil
		})
		// A server restart makes the connector log its disconnect and reconnect.
		accepted, exits := auth.accepted.Load(), lastSeq(js, subjects.StreamLaserSellExit)
		ns.Shutdown()
		ns.WaitForShutdown()
		startAuthNATS(t, addr, store, auth)
		waitUntil(t, 20*time.Second, "the connector back on the restarted NATS", func() error {
			if n := auth.accepted.Load(); n < accepted+3 {
				return fmt.Errorf("%d new connections", n-accepted)
			}
			if n := lastSeq(js, subjects.StreamLaserSellExit); n < exits+3 {
				return fmt.Errorf("%d new exit signals", n-exits)
			}
			return nil
		})
		scan.http(t, httpAddr)
		if err := p.stop(15 * time.Second); err != nil {
			t.Errorf("connector did not stop cleanly: %v", err)
		}
		p.checkNoRace()
		scan.add("connector stdout+stderr", p.output())
		scan.streams(t, js)
		scan.check(t, []string{key, auth.password, auth.user + ":" + auth.password})
	})

	t.Run("wrong_api_key", func(t *testing.T) {
		rightKey := randomSecret(t, "rightkey")
		wrongKey := randomSecret(t, "wrongkey")
		rig := newSecretsRig(t, rightKey)
		auth := &secretAuth{user: "connector", password: randomSecret(t, "natspw")}
		ns := startAuthNATS(t, "127.0.0.1:0", "", auth)
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(auth.user, auth.password))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		scan := &secretScan{}
		scan.tap(t, nc)
		httpAddr := freeLoopbackAddr(t)
		env := rig.baseEnv(ns.ClientURL(), httpAddr, rig.lsURL)
		env["LASERSELL_API_KEY"], env["NATS_USER"], env["NATS_PASSWORD"] = wrongKey, auth.user, auth.password
		p := startConnectorProc(t, "connector", env)
		waitUntil(t, 20*time.Second, "the simulator to refuse the key (401) repeatedly", func() error {
			if n := rig.ls.Stats().Refused; n < 3 {
				return fmt.Errorf("%d refusals", n)
			}
			return nil
		})
		scan.commands(t, nc)
		scan.http(t, httpAddr)
		if err := p.stop(15 * time.Second); err != nil {
			t.Errorf("connector did not stop cleanly: %v", err)
		}
		p.checkNoRace()
		scan.add("connector stdout+stderr", p.output())
		scan.streams(t, js)
		scan.check(t, []string{wrongKey, rightKey, auth.password})
	})

	t.Run("upstream_echoes_the_key_in_its_401", func(t *testing.T) {
		key := randomSecret(t, "echokey")
		rig := newSecretsRig(t, "not-this-one")
		var refusals atomic.Int64
		echo := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			refusals.Add(1)
			got := r.Header.Get("x-api-key")
			w.Header().Set("WWW-Authenticate", `ApiKey error="invalid key `+got+`"`)
			http.Error(w, `{"error":"unauthorized","message":"invalid api key `+got+`"}`, http.StatusUnauthorized)
		})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = echo.Serve(ln) }()
		t.Cleanup(func() { _ = echo.Close() })
		auth := &secretAuth{token: randomSecret(t, "natstoken")}
		ns := startAuthNATS(t, "127.0.0.1:0", "", auth)
		nc, err := nats.Connect(ns.ClientURL(), nats.Token(auth.token))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		scan := &secretScan{}
		scan.tap(t, nc)
		httpAddr := freeLoopbackAddr(t)
		env := rig.baseEnv(ns.ClientURL(), httpAddr, "ws://"+ln.Addr().String()+"/v1/ws")
		env["LASERSELL_API_KEY"], env["NATS_TOKEN"] = key, auth.token
		p := startConnectorProc(t, "connector", env)
		waitUntil(t, 20*time.Second, "repeated 401s", func() error {
			if refusals.Load() < 3 {
				return errNotYet
			}
			return nil
		})
		scan.commands(t, nc)
		scan.http(t, httpAddr)
		if err := p.stop(15 * time.Second); err != nil {
			t.Errorf("connector did not stop cleanly: %v", err)
		}
		p.checkNoRace()
		scan.add("connector stdout+stderr", p.output())
		scan.streams(t, js)
		scan.check(t, []string{key, auth.token})
	})

	t.Run("wrong_nats_password", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		auth := &secretAuth{user: "connector", password: randomSecret(t, "rightpw")}
		wrong := randomSecret(t, "wrongpw")
		ns := startAuthNATS(t, "127.0.0.1:0", "", auth)
		env := rig.baseEnv(ns.ClientURL(), freeLoopbackAddr(t), rig.lsURL)
		env["LASERSELL_API_KEY"], env["NATS_USER"], env["NATS_PASSWORD"] = key, auth.user, wrong
		p := startConnectorProc(t, "connector", env)
		waitUntil(t, 20*time.Second, "NATS to refuse the password repeatedly, and a log line", func() error {
			if !p.running() {
				return nil // exiting on a refused password is fine too
			}
			if auth.rejected.Load() < 3 || len(p.output()) == 0 {
				return errNotYet
			}
			return nil
		})
		if auth.accepted.Load() != 0 {
			t.Fatal("the server accepted a wrong password")
		}
		_ = p.stop(15 * time.Second)
		p.checkNoRace()
		t.Logf("connector output with a wrong NATS password:\n%s", p.output())
		scan := &secretScan{}
		scan.add("connector stdout+stderr", p.output())
		scan.check(t, []string{key, wrong, auth.password})
	})

	t.Run("invalid_creds_file", func(t *testing.T) {
		key := randomSecret(t, "apikey")
		rig := newSecretsRig(t, key)
		jwtPart, seedPart := randomSecret(t, "credsjwt"), randomSecret(t, "credsseed")
		creds := filepath.Join(t.TempDir(), "broken.creds")
		content := "-----BEGIN NATS USER JWT-----\n" + jwtPart + "\n------END NATS USER JWT------\n\n" +
			"-----BEGIN USER NKEY SEED-----\n" + seedPart + "\n------END USER NKEY SEED------\n"
		if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		addr := freeLoopbackAddr(t)
		attempts, _ := fakeNATS(t, addr)
		env := rig.baseEnv("nats://"+addr, freeLoopbackAddr(t), rig.lsURL)
		env["LASERSELL_API_KEY"], env["NATS_CREDS"] = key, creds
		p := startConnectorProc(t, "connector", env)
		waitUntil(t, 20*time.Second, "the connector to try the broken creds and say so", func() error {
			if !p.running() || attempts.Load() >= 3 && len(p.output()) > 0 {
				return nil
			}
			return errNotYet
		})
		_ = p.stop(15 * time.Second)
		p.checkNoRace()
		scan := &secretScan{}
		scan.add("connector stdout+stderr", p.output())
		scan.check(t, []string{key, jwtPart, seedPart})
		t.Logf("connector output with a broken creds file:\n%s", p.output())
	})
}
