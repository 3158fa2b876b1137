// Package connectortest gives tests a real embedded NATS server with JetStream,
// a provisioned Runtime and helpers to read what landed in the streams.
package connectortest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/embednats"
	"github.com/jetbridge/connector/subjects"
)

// Env is one test's NATS server, connection and runtime.
type Env struct {
	T        testing.TB
	Server   *embednats.Server
	StoreDir string
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Runtime  *connector.Runtime
	// HighConn and LowConn are the runtime's own connections (Conn is the test's).
	HighConn, LowConn *nats.Conn
	Registry          *prometheus.Registry
	Log               zerolog.Logger
}

// Options tweak the runtime a test gets.
type Options struct {
	// Kinds are provisioned; nil means LaserSell and Open Stream.
	Kinds []subjects.Kind
	// StoreDir reuses a JetStream directory (to test a restart); empty = t.TempDir().
	StoreDir string
	// These are as in connector.Options (zero means its default).
	Window               int
	LowLinger            time.Duration
	SingleLane           bool
	AckTimeout           time.Duration
	DrainTimeout         time.Duration
	CommandTimeout       time.Duration
	CommandMaxBytes      int
	CommandRate          float64
	CommandBurst         int
	QuietUnknownSessions bool
	LowLanePerMessage    bool
	LowLaneNoReceived    bool
	LowLaneKeepLatest    bool
}

// Start starts an embedded server on a free loopback port and a runtime on it.
// Everything is stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.StoreDir == "" {
		opts.StoreDir = t.TempDir()
	}
	srv, err := embednats.Start(embednats.Options{Listen: "127.0.0.1:0", StoreDir: opts.StoreDir})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Stop)
	env := &Env{T: t, Server: srv, StoreDir: opts.StoreDir, Log: Logger(t)}
	env.Conn = env.Connect()
	env.JS, err = jetstream.New(env.Conn)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	env.Registry = prometheus.NewRegistry()
	env.HighConn, env.LowConn = env.Connect(), env.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if opts.Kinds == nil {
		opts.Kinds = []subjects.Kind{subjects.LaserSell(), subjects.OpenStream()}
	}
	env.Runtime, err = connector.New(ctx, connector.Options{
		HighConn: env.HighConn, LowConn: env.LowConn, Kinds: opts.Kinds,
		Window: opts.Window, LowLinger: opts.LowLinger, SingleLane: opts.SingleLane,
		AckTimeout: opts.AckTimeout, DrainTimeout: opts.DrainTimeout,
		CommandTimeout: opts.CommandTimeout, CommandMaxBytes: opts.CommandMaxBytes,
		CommandRate: opts.CommandRate, CommandBurst: opts.CommandBurst,
		QuietUnknownSessions: opts.QuietUnknownSessions, LowLanePerMessage: opts.LowLanePerMessage,
		LowLaneNoReceived: opts.LowLaneNoReceived,
		LowLaneKeepLatest: opts.LowLaneKeepLatest,
		Metrics:           connector.NewMetrics(env.Registry), Log: env.Log,
	})
	if err != nil {
		t.Fatalf("runtime: %v", err)
	}
	return env
}

// Logger writes the connector's logs through t.Log, shown only on failure.
func Logger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: testWriter{t}, NoColor: true}).Level(zerolog.DebugLevel).With().Timestamp().Logger()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// Connect opens a new client connection that reconnects forever, closed at cleanup.
func (e *Env) Connect() *nats.Conn {
	e.T.Helper()
	nc, err := nats.Connect(e.Server.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		e.T.Fatalf("connect to NATS: %v", err)
	}
	e.T.Cleanup(nc.Close)
	return nc
}

// Run runs the sessions on the runtime in the background. The returned stop
// function cancels them and waits for the runtime to drain; it is also called
// at cleanup.
func (e *Env) Run(sessions ...connector.Session) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Runtime.Run(ctx, sessions...) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	e.T.Cleanup(func() { _ = stop() })
	select {
	case <-e.Runtime.Serving():
	case err := <-done:
		e.T.Fatalf("runtime stopped at start: %v", err)
	case <-time.After(10 * time.Second):
		e.T.Fatal("runtime did not start serving commands")
	}
	return stop
}

// Fetch reads up to n messages of stream whose subject matches filter, waiting at
// most timeout for them to arrive. It returns what it found (possibly fewer).
func (e *Env) Fetch(stream, filter string, n int, timeout time.Duration) []jetstream.Msg {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cons, err := e.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		e.T.Fatalf("consumer on %s: %v", stream, err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := cons.FetchNoWait(n - len(out))
		if err != nil {
			e.T.Fatalf("fetch from %s: %v", stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if got == 0 {
			select {
			case <-ctx.Done():
				return out
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return out
}

// Count returns how many messages stream holds for subject filter.
func (e *Env) Count(stream, filter string) uint64 {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.JS.Stream(ctx, stream)
	if err != nil {
		e.T.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		e.T.Fatalf("stream %s info: %v", stream, err)
	}
	var total uint64
	for _, c := range info.State.Subjects {
		total += c
	}
	return total
}

// WaitCount waits until stream holds at least want messages on filter.
func (e *Env) WaitCount(stream, filter string, want uint64, timeout time.Duration) uint64 {
	e.T.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := e.Count(stream, filter)
		if got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Reply is a decoded command reply.
type Reply struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Raw map[string]any `json:"-"`
}

// Request sends a command and decodes the reply.
func (e *Env) Request(subject string, body string, timeout time.Duration) Reply {
	e.T.Helper()
	msg, err := e.Conn.Request(subject, []byte(body), timeout)
	if err != nil {
		e.T.Fatalf("request %s: %v", subject, err)
	}
	var r Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		e.T.Fatalf("reply of %s is not JSON: %v: %q", subject, err, msg.Data)
	}
	_ = json.Unmarshal(msg.Data, &r.Raw)
	return r
}

// Eventually polls cond every 10 ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Metric sums every series of the named metric in the runtime's registry
// (histograms: their sample counts).
func (e *Env) Metric(name string) float64 {
	e.T.Helper()
	return e.MetricWhere(name, nil)
}

// MetricWhere sums the series of the named metric whose labels include every
// pair of match; for histograms it sums the sample counts.
func (e *Env) MetricWhere(name string, match map[string]string) float64 {
	e.T.Helper()
	families, err := e.Registry.Gather()
	if err != nil {
		e.T.Fatalf("gather metrics: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// AuditRecord is one record of the CONNECTOR_AUDIT stream.
type AuditRecord struct {
	Command      string          `json:"command"`
	WantsReply   bool            `json:"wants_reply"`
	Request      json.RawMessage `json:"request"`
	RequestBytes int             `json:"request_bytes"`
	Suppressed   int             `json:"suppressed"`
	Reply        struct {
		OK    bool `json:"ok"`
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"reply"`
}

// Code is the refusal code of the record ("" when the command succeeded).
func (a AuditRecord) Code() string {
	if a.Reply.Error == nil {
		return ""
	}
	return a.Reply.Error.Code
}

// Refusals is how many refusals the record stands for: itself (unless it is
// a summary, with a null request) plus the ones it reports as suppressed.
func (a AuditRecord) Refusals() int {
	if string(a.Request) == "null" {
		return a.Suppressed
	}
	return 1 + a.Suppressed
}

// Audits returns every audit record on filter (for example "openstream.cell1.audit.>").
func (e *Env) Audits(filter string) []AuditRecord {
	e.T.Helper()
	n := int(e.Count(subjects.StreamAudit, filter))
	var out []AuditRecord
	for _, m := range e.Fetch(subjects.StreamAudit, filter, n, 5*time.Second) {
		var rec AuditRecord
		if err := json.Unmarshal(m.Data(), &rec); err != nil {
			e.T.Fatalf("audit record is not JSON: %v: %q", err, m.Data())
		}
		out = append(out, rec)
	}
	return out
}

// AuditedRefusals counts, per refusal code, the refusals the audit records on
// filter account for (summary records included).
func (e *Env) AuditedRefusals(filter string) map[string]int {
	e.T.Helper()
	out := map[string]int{}
	for _, rec := range e.Audits(filter) {
		if c := rec.Code(); c != "" {
			out[c] += rec.Refusals()
		}
	}
	return out
}

// Opened wraps spec so that the source its Open builds is also stored in
// *src (typed as the test needs it), for tests that look inside a source.
func Opened[S connector.Source](spec connector.Session, src *S) connector.Session {
	open := spec.Open
	spec.Open = func(h *connector.Host) (connector.Source, error) {
		s, err := open(h)
		if err == nil {
			*src = s.(S)
		}
		return s, err
	}
	return spec
}

// idle is a source that serves no command and emits nothing by itself.
type idle struct{}

func (idle) Commands() []string                                     { return nil }
func (idle) Run(ctx context.Context) error                          { <-ctx.Done(); return nil }
func (idle) Handle(context.Context, connector.Command) (any, error) { return nil, nil }

// Host starts a session kind.name whose source does nothing, and returns
// its host: for tests of the lanes, status and KV without a source.
func (e *Env) Host(kind, name string, sizes connector.LaneSizes) *connector.Host {
	e.T.Helper()
	var h *connector.Host
	err := e.Runtime.Start(context.Background(), connector.Session{
		Kind: kind, Name: name, Lanes: sizes,
		Open: func(host *connector.Host) (connector.Source, error) { h = host; return idle{}, nil },
	})
	if err != nil {
		e.T.Fatalf("start session %s.%s: %v", kind, name, err)
	}
	return h
}
