package main

// Least privilege: a server runs deploy/nats/permissions.conf as written (the
// file the README documents), and the connector, a read-only consumer, an
// operator and a robot-control role each get what it grants and nothing
// more. Refusals are the server's own (permission violations): a refused
// command never reaches the connector, so never reaches an upstream.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/connector"
	lssim "github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

const permissionsConf = "../../deploy/nats/permissions.conf"

// permissionUsers are the users of permissions.conf and the variables their
// passwords come from.
func permissionUsers() map[string]string {
	return map[string]string{
		"connector": "CONNECTOR_PASSWORD", "consumer": "CONSUMER_PASSWORD",
		"operator": "OPERATOR_PASSWORD", "robot_control": "ROBOT_CONTROL_PASSWORD",
	}
}

// violationLog keeps the server's permission-violation lines.
type violationLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *violationLog) Errorf(format string, v ...any) {
	if line := fmt.Sprintf(format, v...); strings.Contains(line, "Violation") {
		l.mu.Lock()
		l.lines = append(l.lines, line)
		l.mu.Unlock()
	}
}
func (l *violationLog) Noticef(string, ...any) {}
func (l *violationLog) Warnf(string, ...any)   {}
func (l *violationLog) Fatalf(string, ...any)  {}
func (l *violationLog) Debugf(string, ...any)  {}
func (l *violationLog) Tracef(string, ...any)  {}

// of returns the violations logged for connections whose line contains who.
func (l *violationLog) of(who string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.Contains(line, who) {
			out = append(out, line)
		}
	}
	return out
}

// permServer is a server running permissions.conf.
type permServer struct {
	ns         *server.Server
	passwords  map[string]string
	violations *violationLog
}

// startPermissionsNATS loads permissions.conf unchanged but for its port and
// store directory, with a random password per user in the environment.
func startPermissionsNATS(t *testing.T) *permServer {
	t.Helper()
	ps := &permServer{passwords: map[string]string{}, violations: &violationLog{}}
	for user, variable := range permissionUsers() {
		ps.passwords[user] = randomSecret(t, user)
		t.Setenv(variable, ps.passwords[user])
	}
	opts, err := server.ProcessConfigFile(permissionsConf)
	if err != nil {
		t.Fatalf("%s: %v", permissionsConf, err)
	}
	opts.Host, opts.Port, opts.StoreDir, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, t.TempDir(), true
	ps.ns = startNATSServer(t, opts)
	ps.ns.SetLoggerV2(ps.violations, false, false, false)
	return ps
}

// connect connects as user, recording the permission errors the server
// sends it.
func (ps *permServer) connect(t *testing.T, user string) (*nats.Conn, *violationLog) {
	t.Helper()
	refused := &violationLog{}
	nc, err := nats.Connect(ps.ns.ClientURL(), nats.UserInfo(user, ps.passwords[user]), nats.Name("test "+user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused.Errorf("%v", err) }))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, refused
}

// refusedByNATS sends a command as the role behind nc and checks that the
// server refused it: no reply, and a permissions violation for the subject.
func refusedByNATS(t *testing.T, nc *nats.Conn, refused *violationLog, subject, body string) {
	t.Helper()
	_, err := nc.Request(subject, []byte(body), 500*time.Millisecond)
	if err == nil {
		t.Errorf("%s was answered", subject)
		return
	}
	waitUntil(t, 5*time.Second, "the server's refusal of "+subject, func() error {
		if len(refused.of(`Publish to "`+subject+`"`)) == 0 {
			return fmt.Errorf("no permissions violation (request error: %v)", err)
		}
		return nil
	})
}

// deniedAction checks that the server refuses publishing to subject, or
// subscribing to it when sub is set.
func deniedAction(t *testing.T, nc *nats.Conn, refused *violationLog, subject string, sub bool) {
	t.Helper()
	want := `Publish to "` + subject + `"`
	if sub {
		want = `Subscription to "` + subject + `"`
		if _, err := nc.Subscribe(subject, func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
	} else if err := nc.Publish(subject, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	waitUntil(t, 5*time.Second, "the server's refusal: "+want, func() error {
		if len(refused.of(want)) == 0 {
			return errNotYet
		}
		return nil
	})
}

// The connector runs with exactly its grant in permissions.conf (streams,
// KV, leases, commands, audit, fast batches: no permission violation in the
// whole run, graceful stop included), and that grant is no more than it
// says: the connector's user may not send commands, delete or purge
// streams, or read everything. The consumer reads streams and buckets (and
// runs connector replay) but its commands are refused by NATS and never
// reach an upstream; the operator may ping and configure and start monitors
// but not close positions or control robots; robot_control controls robots.
// Audit records of commands through the OPS account's imports name the
// requester.
func TestPermissionsExampleIsEnforced(t *testing.T) {
	ps := startPermissionsNATS(t)
	cfg := lssim.DefaultConfig()
	cfg.APIKey, cfg.AutoPositions, cfg.ExitEvery, cfg.PnLRate = "perm-key", 1, 100*time.Millisecond, 50
	ls, lsURL, robot, robotAddr := startSims(t, cfg)
	env := map[string]string{
		"NATS_URL": ps.ns.ClientURL(), "NATS_USER": "connector", "NATS_PASSWORD": ps.passwords["connector"],
		"CONNECTOR_HTTP_ADDR": freeLoopbackAddr(t), "LOG_FORMAT": "json", "CONNECTOR_LEASE_TTL": "3s",
		"CONNECTOR_ACK_TIMEOUT": "1s", "CONNECTOR_DRAIN_TIMEOUT": "2s", "CONNECTOR_COMMAND_TIMEOUT": "2s",
		"LASERSELL_URL": lsURL, "LASERSELL_API_KEY": "perm-key", "LASERSELL_SESSION": "perm",
		"LASERSELL_WALLETS": "PermWallet111111111111111111111111111111111", "LASERSELL_TARGET_PROFIT_PCT": "5",
		"OPENSTREAM_ROBOTS": "arm=" + robotAddr, "OPENSTREAM_MONITORS": "arm/pose=/project/robot/po_cur@20ms",
		"OPENSTREAM_CONTROL_ALLOW": "arm=/project/robot/motor_on",
	}
	p := startConnectorProc(t, "connector", env)
	waitUntil(t, 30*time.Second, "the connector ready (streams, buckets, leases, upstreams)", func() error {
		body, err := httpBody("http://" + env["CONNECTOR_HTTP_ADDR"] + "/readyz")
		var ready struct{ Ready bool }
		if err != nil || json.Unmarshal(body, &ready) != nil || !ready.Ready {
			return fmt.Errorf("readyz: %v %s", err, body)
		}
		return nil
	})

	consumer, consumerRefused := ps.connect(t, "consumer")
	js, err := jetstream.New(consumer)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "exits, MONITOR data and PnL stored, read by the consumer", func() error {
		for stream, want := range map[string]uint64{subjects.StreamLaserSellExit: 3, subjects.StreamOpenStreamData: 20, subjects.StreamLaserSellPnL: 20} {
			if n := lastSeq(js, stream); n < want {
				return fmt.Errorf("%s at %d", stream, n)
			}
		}
		return nil
	})

	operator, operatorRefused := ps.connect(t, "operator")
	robotControl, _ := ps.connect(t, "robot_control")
	lsCmd := func(c string) string { return subjects.Command(subjects.KindLaserSell, "perm", c) }
	osCmd := func(c string) string { return subjects.Command(subjects.KindOpenStream, "arm", c) }
	closeBody := fmt.Sprintf(`{"position_id":%d}`, openPosition(t, ls))

	t.Run("operator", func(t *testing.T) {
		if r := requestCommand(t, operator, lsCmd("ping"), `{}`, 15*time.Second); !r.OK {
			t.Errorf("ping: %s", r.raw)
		}
		configure := `{"wallet_pubkeys":["PermWallet222222222222222222222222222222222"],"strategy":{"target_profit_pct":7}}`
		if r := requestCommand(t, operator, lsCmd("configure"), configure, 15*time.Second); !r.OK {
			t.Errorf("configure: %s", r.raw)
		}
		if r := requestCommand(t, operator, osCmd("monitor"), `{"name":"joints","url":"/project/robot/joints/joint_states","period_ms":20}`, 15*time.Second); !r.OK {
			t.Errorf("monitor: %s", r.raw)
		}
		refusedByNATS(t, operator, operatorRefused, lsCmd("close_position"), closeBody)
		refusedByNATS(t, operator, operatorRefused, osCmd("control"), `{"url":"/project/robot/motor_on","method":"POST"}`)
	})
	t.Run("robot_control", func(t *testing.T) {
		if r := requestCommand(t, robotControl, osCmd("control"), `{"url":"/project/robot/motor_on","method":"POST"}`, 15*time.Second); !r.OK {
			t.Errorf("control: %s", r.raw)
		}
	})
	t.Run("consumer", func(t *testing.T) {
		refusedByNATS(t, consumer, consumerRefused, lsCmd("close_position"), closeBody)
		refusedByNATS(t, consumer, consumerRefused, lsCmd("ping"), `{}`)
		refusedByNATS(t, consumer, consumerRefused, osCmd("control"), `{"url":"/project/robot/motor_on","method":"POST"}`)
		deniedAction(t, consumer, consumerRefused, "lasersell.perm.exit.ForgedWallet", false)
		deniedAction(t, consumer, consumerRefused, "$KV.CONNECTOR_DESIRED.lasersell.perm.configure", false)
		deniedAction(t, consumer, consumerRefused, "$JS.API.STREAM.DELETE."+subjects.StreamLaserSellExit, false)
		deniedAction(t, consumer, consumerRefused, "lasersell.*.cmd.*", true) // could steal the micro queue group
		kv, err := js.KeyValue(context.Background(), subjects.BucketStatus)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(context.Background(), "lasersell.perm"); err != nil {
			t.Errorf("the consumer cannot read the status bucket: %v", err)
		}
		replayEnv := map[string]string{"NATS_URL": ps.ns.ClientURL(), "NATS_USER": "consumer", "NATS_PASSWORD": ps.passwords["consumer"]}
		out, errOut, status := runCLI(t, replayEnv, "replay", "--subject", "lasersell.perm.exit.*", "--since", "1m", "--progress", "off")
		if status != 0 || strings.Count(out, "\n") < 3 {
			t.Errorf("connector replay as the consumer: status %d, %q", status, errOut)
		}
	})
	t.Run("connector_grant_is_bounded", func(t *testing.T) {
		probe, refused := ps.connect(t, "connector")
		deniedAction(t, probe, refused, lsCmd("close_position"), false)
		deniedAction(t, probe, refused, "$JS.API.STREAM.DELETE."+subjects.StreamLaserSellExit, false)
		deniedAction(t, probe, refused, "$JS.API.STREAM.PURGE."+subjects.StreamAudit, false)
		deniedAction(t, probe, refused, "$JS.API.STREAM.CREATE.OTHER", false)
		deniedAction(t, probe, refused, ">", true)
	})

	// Nothing refused reached an upstream.
	for _, f := range ls.Received() {
		if f.Type == "close_position" {
			t.Errorf("close_position reached LaserSell: %s", f.Raw)
		}
	}
	var controls int
	for _, c := range robot.Received() {
		if strings.EqualFold(c.Cmd, "control") {
			controls++
		}
	}
	if controls != 1 {
		t.Errorf("%d CONTROLs reached the robot, want 1 (robot_control's)", controls)
	}

	// Audit: the requester of each command through OPS, nothing for the refused ones.
	wantUser := map[string]string{"ping": "operator", "configure": "operator", "monitor": "operator", "control": "robot_control"}
	var audits []storedMsg
	waitUntil(t, 15*time.Second, "the audit records of the four accepted commands", func() error {
		audits = readAudit(t, js)
		if len(audits) < len(wantUser) {
			return fmt.Errorf("%d audit records", len(audits))
		}
		return nil
	})
	for _, m := range audits {
		var rec connector.AuditRecord
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Origin != "" {
			continue // issued by the connector itself
		}
		user, ok := wantUser[rec.Command]
		switch {
		case !ok:
			t.Errorf("audit record for %s on %s: the server refused that command", rec.Command, m.Subject)
		case rec.Requester == nil || rec.Requester.Account != "OPS" || rec.Requester.User != user || rec.Requester.Name != "test "+user:
			t.Errorf("audit record for %s: requester %+v, want OPS/%s", rec.Command, rec.Requester, user)
		}
	}

	if err := p.stop(15 * time.Second); err != nil {
		t.Errorf("connector did not stop cleanly: %v", err)
	}
	p.checkNoRace()
	if v := ps.violations.of(`go:connector `); len(v) > 0 {
		t.Errorf("the connector needed more than its grant: %d permission violations, first: %s", len(v), v[0])
	}
	if n := strings.Count(string(p.output()), "Permissions Violation"); n > 0 {
		t.Errorf("the connector logged %d permission violations", n)
	}
}

// openPosition opens a position in the simulator and returns its id.
func openPosition(t *testing.T, ls *lssim.Server) uint64 {
	t.Helper()
	return ls.OpenPosition("PermWallet111111111111111111111111111111111", "PermMint1111111111111111111111111111111111", 1000)
}

// readAudit reads CONNECTOR_AUDIT (as the consumer).
func readAudit(t *testing.T, js jetstream.JetStream) []storedMsg {
	t.Helper()
	if lastSeq(js, subjects.StreamAudit) == 0 {
		return nil
	}
	return readStream(t, js, subjects.StreamAudit)
}

// The connector's grant in permissions.conf publishes to exactly its streams'
// subjects (a new stream or subject must be added there, and a stale one
// removed), and the README shows the file's grants as they are.
func TestPermissionsExampleMatchesTheStreamsAndTheREADME(t *testing.T) {
	for user, variable := range permissionUsers() {
		t.Setenv(variable, "x-"+user)
	}
	opts, err := server.ProcessConfigFile(permissionsConf)
	if err != nil {
		t.Fatal(err)
	}
	var grant *server.Permissions
	for _, u := range opts.Users {
		if u.Username == "connector" {
			grant = u.Permissions
		}
	}
	if grant == nil || grant.Publish == nil || grant.Subscribe == nil || grant.Response == nil {
		t.Fatal("permissions.conf: user connector has no publish, subscribe and response permissions")
	}
	var want, got []string
	for _, s := range subjects.Streams(subjectKinds(builtinKinds())...) {
		want = append(want, s.Subjects...)
	}
	for _, s := range grant.Publish.Allow {
		if !strings.HasPrefix(s, "$") && !strings.HasPrefix(s, "_") {
			got = append(got, s)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("connector publish grant %v, want its streams' subjects %v", got, want)
	}
	for _, s := range subjects.Streams(subjectKinds(builtinKinds())...) {
		if !slices.Contains(grant.Publish.Allow, "$JS.API.STREAM.CREATE."+s.Name) {
			t.Errorf("the connector may not create stream %s", s.Name)
		}
	}
	for _, b := range subjects.Buckets(subjectKinds(builtinKinds())...) {
		if !slices.Contains(grant.Publish.Allow, "$KV."+b.Name+".>") {
			t.Errorf("the connector may not write bucket %s", b.Name)
		}
	}

	// Every line of the README's conf blocks is a line of the file, in order.
	readme := readmeText(t)
	start := strings.Index(readme, "\n## Securing it")
	if start < 0 {
		t.Fatal("README has no Securing it section")
	}
	section := readme[start+1:]
	section = section[:strings.Index(section, "\n## ")+1]
	file, err := os.ReadFile(permissionsConf)
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(section, "```conf\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("Securing it shows no ```conf block of permissions.conf")
	}
	lines := strings.Split(string(file), "\n")
	for _, block := range blocks {
		at := 0
		sc := bufio.NewScanner(strings.NewReader(block[:strings.Index(block, "```")]))
		for sc.Scan() {
			l := sc.Text()
			if strings.TrimSpace(l) == "" || strings.TrimSpace(l) == "..." {
				continue
			}
			i := slices.Index(lines[at:], l)
			if i < 0 {
				t.Errorf("README line %q is not in permissions.conf (after line %d)", l, at)
				continue
			}
			at += i + 1
		}
	}
}
