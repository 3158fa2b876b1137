package connector_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/jetbridge/connector/connector"
)

// requesterAccounts is a server with the connector's account (SVC) serving
// cmd.> and an account (OPS) importing it twice: with share: true on cmd.>
// and without on plain.>, mapped onto cmd.plain.>.
const requesterAccounts = `
listen: 127.0.0.1:-1
accounts {
  SVC {
    users: [{user: svc, password: svc}, {user: insider, password: insider}]
    exports: [{service: "cmd.>"}]
  }
  OPS {
    users: [{user: alice, password: alice}]
    imports: [
      {service: {account: SVC, subject: "cmd.>"}, share: true}
      {service: {account: SVC, subject: "cmd.plain.>"}, to: "plain.>"}
    ]
  }
}
`

// The requester comes from the server, not from the request: nats-server
// writes Nats-Request-Info on a request that crosses a service import
// (replacing a copy the client sent), naming the user only when the import
// shares it; inside the account there is none, and a header there is
// whatever its sender wrote (so the permissions example lets nobody in the
// connector's account publish commands).
func TestRequesterComesFromTheServer(t *testing.T) {
	opts := &server.Options{}
	if err := opts.ProcessConfigString(requesterAccounts); err != nil {
		t.Fatal(err)
	}
	opts.NoSigs = true
	ns := startServer(t, opts)
	connect := func(user, name string) *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, user), nats.Name(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	svc := connect("svc", "connector")
	got := make(chan *connector.Requester, 1)
	if _, err := svc.Subscribe("cmd.>", func(m *nats.Msg) {
		got <- connector.RequesterOf(m.Header)
		_ = m.Respond([]byte(`{"ok":true}`))
	}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	forged := `{"acc":"SVC","user":"admin","name":"forged"}`
	ask := func(nc *nats.Conn, subject, header string) *connector.Requester {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Data = []byte(`{}`)
		if header != "" {
			msg.Header.Set(connector.RequestInfoHeader, header)
		}
		if _, err := nc.RequestMsg(msg, 5*time.Second); err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		return <-got
	}
	alice := connect("alice", "alice-cli")

	r := ask(alice, "cmd.ping", forged)
	if r == nil || r.Account != "OPS" || r.User != "alice" || r.Name != "alice-cli" || r.Host != "127.0.0.1" {
		t.Errorf("through a shared import: %+v, want OPS/alice/alice-cli/127.0.0.1 (the forged header replaced)", r)
	}
	r = ask(alice, "plain.ping", "")
	if r == nil || r.Account != "OPS" || r.User != "" || r.Name != "" {
		t.Errorf("through an import without share: %+v, want the account only", r)
	}
	insider := connect("insider", "insider")
	if r := ask(insider, "cmd.ping", ""); r != nil {
		t.Errorf("inside the account: %+v, want none", r)
	}
	if r := ask(insider, "cmd.ping", forged); r == nil || r.User != "admin" {
		t.Errorf("inside the account, a header the sender wrote: %+v (it is passed through: the sender's word)", r)
	}
	if r := ask(insider, "cmd.ping", `not json`); r != nil {
		t.Errorf("a header that is not the server's JSON: %+v, want none", r)
	}
}

// startServer starts an in-process nats-server with opts, shut down at
// cleanup at the latest.
func startServer(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("NATS server did not start")
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}
