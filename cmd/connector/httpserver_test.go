package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func readyzReport(t *testing.T, base string) (int, readyReport) {
	t.Helper()
	code, body := get(t, base+"/readyz")
	var r readyReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	return code, r
}

func failingNames(r readyReport) []string {
	var out []string
	for _, f := range r.Failing {
		out = append(out, f.Check+":"+f.Name)
	}
	return out
}

// /readyz names every failing check: a session whose upstream is not
// established, a stream or KV bucket missing on the server, a NATS connection
// that is down. /healthz stays 200 throughout.
func TestReadyzNamesWhatIsNotReady(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	t.Cleanup(env.Runtime.Close)
	h := env.Host(subjects.KindLaserSell, "ready", connector.LaneSizes{})
	low := env.Connect()
	srv := httptest.NewServer(newHTTPHandler(httpDeps{
		reg: env.Registry, rt: env.Runtime, kinds: []subjects.Kind{subjects.LaserSell()},
		conns:      map[string]*nats.Conn{"high": env.Conn, "low": low},
		streamsTTL: time.Nanosecond, // every probe lists the streams
	}))
	t.Cleanup(srv.Close)

	code, r := readyzReport(t, srv.URL)
	if code != http.StatusServiceUnavailable || r.Ready || strings.Join(failingNames(r), ",") != "session:lasersell.ready" {
		t.Fatalf("before any status: %d %+v", code, r)
	}
	if err := h.SetStatus(context.Background(), connector.Status{State: connector.StateReconnecting, Reason: "dial refused"}); err != nil {
		t.Fatal(err)
	}
	if _, r := readyzReport(t, srv.URL); len(r.Failing) != 1 || !strings.Contains(r.Failing[0].Reason, "reconnecting: dial refused") {
		t.Fatalf("reconnecting session: %+v", r)
	}

	h.Metrics().Connected.Set(1) // what a source does once its upstream session is established
	if code, r := readyzReport(t, srv.URL); code != http.StatusOK || !r.Ready || len(r.Failing) != 0 {
		t.Fatalf("everything up: %d %+v", code, r)
	}

	if err := env.JS.DeleteStream(context.Background(), subjects.StreamLaserSellExit); err != nil {
		t.Fatal(err)
	}
	if err := env.JS.DeleteKeyValue(context.Background(), subjects.BucketStatus); err != nil {
		t.Fatal(err)
	}
	code, r = readyzReport(t, srv.URL)
	if got := strings.Join(failingNames(r), ","); code != http.StatusServiceUnavailable ||
		got != "stream:"+subjects.StreamLaserSellExit+",stream:KV_"+subjects.BucketStatus {
		t.Fatalf("missing stream and bucket: %d %s", code, got)
	}

	low.Close()
	_, r = readyzReport(t, srv.URL)
	if got := failingNames(r); len(got) == 0 || got[0] != "nats:low" {
		t.Fatalf("closed NATS connection: %+v", r)
	}
	if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz %d %q while not ready", code, body)
	}
}

// The stream listing is cached: a probe storm costs the server one request per TTL.
func TestReadyzCachesTheStreamListing(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{})
	t.Cleanup(env.Runtime.Close)
	ready := &readiness{deps: httpDeps{rt: env.Runtime, kinds: []subjects.Kind{subjects.LaserSell()}}, streamsTTL: time.Hour, streamsTimeout: time.Second}
	if missing := ready.streams(context.Background()); len(missing) != 0 {
		t.Fatalf("fresh runtime misses %+v", missing)
	}
	if err := env.JS.DeleteStream(context.Background(), subjects.StreamLaserSellExit); err != nil {
		t.Fatal(err)
	}
	if missing := ready.streams(context.Background()); len(missing) != 0 {
		t.Fatalf("within the TTL the cached listing must answer, got %+v", missing)
	}
	ready.checkedAt = time.Time{} // the TTL has passed
	if missing := ready.streams(context.Background()); len(missing) != 1 || missing[0].Name != subjects.StreamLaserSellExit {
		t.Fatalf("after the TTL: %+v", missing)
	}
}
