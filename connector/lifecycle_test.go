package connector_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/subjects"
)

// probeKind is a kind the core tests declare themselves: the core needs no
// real upstream's streams to run sessions.
func probeKind() subjects.Kind {
	return subjects.Kind{
		Name: "probe",
		Streams: []subjects.StreamSpec{{
			Name: "PROBE_EVENTS", Lane: subjects.LaneHigh,
			Subjects: []string{"probe.*.event.*", subjects.Status("probe", subjects.Any), subjects.Malformed("probe", subjects.Any)},
		}},
	}
}

// tickSource emits one event per tick until it is stopped, and counts its
// running goroutines so the test can see that stopping releases them.
type tickSource struct {
	host    *connector.Host
	every   time.Duration
	running *atomic.Int32
	stopped chan struct{}
}

func (s *tickSource) Commands() []string { return []string{"hello"} }

func (s *tickSource) Handle(context.Context, connector.Command) (any, error) {
	return map[string]string{"session": s.host.Name()}, nil
}

func (s *tickSource) Run(ctx context.Context) error {
	s.running.Add(1)
	defer s.running.Add(-1)
	defer close(s.stopped)
	_ = s.host.SetStatus(ctx, connector.Status{State: connector.StateConnected})
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.host.SetStatus(context.WithoutCancel(ctx), connector.Status{State: connector.StateStopped})
		case <-t.C:
			if err := s.host.Emit(ctx, connector.Event{Subject: "probe." + s.host.Name() + ".event.tick", Payload: []byte(`{}`), Type: "tick"}); err != nil {
				return nil
			}
		}
	}
}

func probeSession(name string, running *atomic.Int32, got **tickSource) connector.Session {
	return connector.Session{Kind: "probe", Name: name, Open: func(h *connector.Host) (connector.Source, error) {
		s := &tickSource{host: h, every: 2 * time.Millisecond, running: running, stopped: make(chan struct{})}
		*got = s
		return s, nil
	}}
}

// One session stops and starts again while another keeps running: the
// stopped one releases its source, its command endpoints and its lanes
// (what it queued is stored, its final status is in KV), and the other is
// not disturbed.
func TestSessionsStartAndStopWhileOthersRun(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{probeKind()}})
	var running atomic.Int32
	var a, b *tickSource
	env.Run(probeSession("a", &running, &a), probeSession("b", &running, &b))
	if r := env.Request("probe.a.cmd.hello", `{}`, 2*time.Second); !r.OK {
		t.Fatalf("a does not answer: %+v", r.Raw)
	}
	connectortest.Eventually(t, 5*time.Second, "both sessions publishing", func() bool {
		return env.Count("PROBE_EVENTS", "probe.a.event.tick") > 5 && env.Count("PROBE_EVENTS", "probe.b.event.tick") > 5
	})
	goroutines := runtime.NumGoroutine()

	if err := env.Runtime.Stop("probe.a"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.stopped:
	default:
		t.Fatal("Stop returned before the source's Run")
	}
	if got := env.Runtime.Running(); len(got) != 1 || got[0] != "probe.b" {
		t.Fatalf("running after stop: %v", got)
	}
	// Everything it emitted was stored: its final status is the last
	// message of its subjects, and KV holds it.
	stored := env.Count("PROBE_EVENTS", "probe.a.>") + env.Count(subjects.StreamAudit, "probe.a.>")
	if events := env.MetricWhere("connector_events_total", map[string]string{"session": "a"}); float64(stored) != events {
		t.Fatalf("session a emitted %v events, %d stored", events, stored)
	}
	// Its commands are no longer served: the kind's subscription refuses.
	if r := env.Request("probe.a.cmd.hello", `{}`, 2*time.Second); r.OK || r.Error == nil || r.Error.Code != connector.CodeUnknownSession {
		t.Fatalf("stopped session answered: %+v", r.Raw)
	}
	kv, err := env.JS.KeyValue(context.Background(), subjects.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "probe.a")
	if err != nil || !containsState(e.Value(), connector.StateStopped) {
		t.Fatalf("status in KV after stop: %v %s", err, valueOf(e))
	}
	// b kept publishing meanwhile and still does.
	before := env.Count("PROBE_EVENTS", "probe.b.event.tick")
	connectortest.Eventually(t, 5*time.Second, "b still publishing", func() bool {
		return env.Count("PROBE_EVENTS", "probe.b.event.tick") > before+5
	})
	if r := env.Request("probe.b.cmd.hello", `{}`, 2*time.Second); !r.OK {
		t.Fatalf("b stopped answering: %+v", r.Raw)
	}
	// The stopped session's goroutines are gone (give the scheduler a moment).
	connectortest.Eventually(t, 5*time.Second, "goroutines of the stopped session released", func() bool {
		return runtime.NumGoroutine() < goroutines
	})

	// The same session starts again, with a new source.
	old := a
	if err := env.Runtime.Start(context.Background(), probeSession("a", &running, &a)); err != nil {
		t.Fatal(err)
	}
	if a == old {
		t.Fatal("restart reused the old source")
	}
	if r := env.Request("probe.a.cmd.hello", `{}`, 2*time.Second); !r.OK {
		t.Fatalf("restarted a does not answer: %+v", r.Raw)
	}
	if err := env.Runtime.Stop("probe.nope"); !errors.Is(err, connector.ErrUnknownSession) {
		t.Fatalf("stop of an unknown session: %v", err)
	}
	if err := env.Runtime.Start(context.Background(), connector.Session{Kind: "lasersell", Name: "x",
		Open: func(*connector.Host) (connector.Source, error) { return nil, errors.New("never") }}); err == nil {
		t.Fatal("a session of a kind the runtime does not provision was started")
	}
	if err := env.Runtime.Start(context.Background(), probeSession("b", &running, &b)); err == nil {
		t.Fatal("a session was started twice")
	}
}

// Many sessions started and stopped concurrently, with commands in flight:
// for the race detector, and every source's Run has returned at the end.
func TestConcurrentStartStop(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{probeKind()}})
	stop := env.Run()
	var running atomic.Int32
	var wg sync.WaitGroup
	names := []string{"c1", "c2", "c3", "c4", "c5", "c6"}
	for _, name := range names {
		wg.Go(func() {
			var src *tickSource
			for range 3 {
				if err := env.Runtime.Start(context.Background(), probeSession(name, &running, &src)); err != nil {
					t.Error(err)
					return
				}
				_ = env.Request("probe."+name+".cmd.hello", `{}`, time.Second)
				if err := env.Runtime.Stop("probe." + name); err != nil {
					t.Error(err)
					return
				}
			}
			// Left running: the runtime's shutdown stops it.
			_ = env.Runtime.Start(context.Background(), probeSession(name, &running, &src))
		})
	}
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := running.Load(); n != 0 {
		t.Fatalf("%d sources still running after shutdown", n)
	}
	if got := env.Runtime.Running(); len(got) != 0 {
		t.Fatalf("sessions left after shutdown: %v", got)
	}
}

func containsState(doc []byte, state string) bool {
	return strings.Contains(string(doc), `"state":"`+state+`"`)
}

func valueOf(e interface{ Value() []byte }) string {
	if e == nil {
		return "<none>"
	}
	return string(e.Value())
}

// oneShot emits one high-lane event without a natural identity, then waits.
type oneShot struct {
	host *connector.Host
	body string
}

func (s *oneShot) Commands() []string                                     { return nil }
func (s *oneShot) Handle(context.Context, connector.Command) (any, error) { return nil, nil }
func (s *oneShot) Run(ctx context.Context) error {
	_ = s.host.Emit(ctx, connector.Event{Subject: "probe." + s.host.Name() + ".event.x", Payload: []byte(s.body), Type: "x"})
	<-ctx.Done()
	return nil
}

// A session started again in the same process gets new synthetic message
// ids: JetStream must not drop its events as copies of the previous run's.
func TestRestartedSessionIsNotDeduplicated(t *testing.T) {
	env := connectortest.Start(t, connectortest.Options{Kinds: []subjects.Kind{probeKind()}})
	env.Run()
	open := func(body string) connector.Session {
		return connector.Session{Kind: "probe", Name: "a", Open: func(h *connector.Host) (connector.Source, error) {
			return &oneShot{host: h, body: body}, nil
		}}
	}
	for i, body := range []string{`{"n":1}`, `{"n":2}`, `{"n":3}`} {
		if err := env.Runtime.Start(context.Background(), open(body)); err != nil {
			t.Fatal(err)
		}
		if got := env.WaitCount("PROBE_EVENTS", "probe.a.event.x", uint64(i+1), 5*time.Second); got != uint64(i+1) {
			t.Fatalf("run %d: stored %d events, want %d (deduplicated as a copy of an earlier run)", i+1, got, i+1)
		}
		if err := env.Runtime.Stop("probe.a"); err != nil {
			t.Fatal(err)
		}
	}
}
