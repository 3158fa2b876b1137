package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// httpDeps is what the HTTP surface reports on.
type httpDeps struct {
	reg     *prometheus.Registry
	rt      *connector.Runtime
	fleet   *connector.Fleet // nil: no leases (tests of the HTTP surface alone)
	replica string
	conns   map[string]*nats.Conn // by role: high, low
	kinds   []subjects.Kind       // source kinds whose streams and buckets the connector owns
	// streamsTTL is how long /readyz trusts its last stream listing (default 2 s).
	streamsTTL time.Duration
}

// startHTTP serves /healthz (alive), /readyz (ready to bridge), /metrics and
// /status (alias /statusz). It returns once listening; the returned function
// stops the server and waits for it.
func startHTTP(addr string, deps httpDeps, log zerolog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, badConfig("CONNECTOR_HTTP_ADDR=%q: %v", addr, err)
	}
	srv := &http.Server{Handler: newHTTPHandler(deps), ReadHeaderTimeout: 5 * time.Second}
	log.Info().Str("addr", ln.Addr().String()).Msg("serving /healthz, /readyz, /metrics and /status")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("HTTP server stopped")
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// lowLaneView is /status's low_lane: the publishing mode and, when it is not
// fast_batch, why; and the low-lane streams that acknowledge before writing.
type lowLaneView struct {
	Publishing   string   `json:"publishing"`
	Why          string   `json:"why,omitempty"`
	PersistAsync []string `json:"persist_async,omitempty"`
}

func newHTTPHandler(deps httpDeps) http.Handler {
	if deps.streamsTTL == 0 {
		deps.streamsTTL = 2 * time.Second
	}
	ready := &readiness{deps: deps, streamsTTL: deps.streamsTTL, streamsTimeout: 2 * time.Second}
	status := func(w http.ResponseWriter, _ *http.Request) {
		var leases []connector.LeaseView
		if deps.fleet != nil {
			leases = deps.fleet.Leases()
		}
		mode, why := deps.rt.LowLanePublishing()
		writeJSON(w, http.StatusOK, struct {
			Replica string `json:"replica,omitempty"`
			// LowLane says how telemetry is published: fast_batch or
			// per_message (and why not in batches).
			LowLane  lowLaneView                 `json:"low_lane"`
			Sessions []connector.SessionSnapshot `json:"sessions"`
			// Leases are every configured session's owner, this replica's or another's.
			Leases []connector.LeaseView `json:"leases,omitempty"`
		}{deps.replica, lowLaneView{mode, why, deps.rt.AsyncPersistStreams()}, deps.rt.Sessions(), leases})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(deps.reg, promhttp.HandlerOpts{Registry: deps.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		report := ready.check(r.Context())
		code := http.StatusOK
		if !report.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, report)
	})
	mux.HandleFunc("GET /status", status)
	mux.HandleFunc("GET /statusz", status) // the name of earlier versions
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// readyReport is the /readyz body: ready, or every check that fails.
type readyReport struct {
	Ready   bool          `json:"ready"`
	Failing []failedCheck `json:"failing,omitempty"`
}

type failedCheck struct {
	// Check is nats, stream, fleet or session.
	Check string `json:"check"`
	// Name is the connection role, stream or session (<source>.<name>).
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// readiness answers /readyz. The stream list costs a JetStream request, so it
// is cached briefly: a probe every second does not load the server.
type readiness struct {
	deps           httpDeps
	streamsTTL     time.Duration
	streamsTimeout time.Duration

	mu        sync.Mutex
	checkedAt time.Time
	missing   []failedCheck
}

func (r *readiness) check(ctx context.Context) readyReport {
	var failing []failedCheck
	connected := true
	for _, role := range []string{"high", "low"} {
		if c := r.deps.conns[role]; c != nil && !c.IsConnected() {
			connected = false
			failing = append(failing, failedCheck{Check: "nats", Name: role, Reason: "connection is " + c.Status().String()})
		}
	}
	if connected {
		failing = append(failing, r.streams(ctx)...)
	}
	if f := r.deps.fleet; f != nil {
		select {
		case <-f.Settled():
		default:
			// Until each configured session's lease was tried, the sessions
			// listed below may not include those this replica is about to run.
			failing = append(failing, failedCheck{Check: "fleet", Name: r.deps.replica, Reason: "taking the leases of the configured sessions"})
		}
	}
	for _, s := range r.deps.rt.Sessions() {
		if s.Connected {
			continue
		}
		reason := "no status yet"
		if s.State != "" {
			reason = "upstream session not established; last state " + s.State
			if s.Reason != "" {
				reason += ": " + s.Reason
			}
		}
		failing = append(failing, failedCheck{Check: "session", Name: s.Source + "." + s.Session, Reason: reason})
	}
	return readyReport{Ready: len(failing) == 0, Failing: failing}
}

// streams returns the connector's streams and KV buckets missing on the
// server (a bucket is the stream KV_<bucket>), from a cache of streamsTTL.
func (r *readiness) streams(ctx context.Context) []failedCheck {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checkedAt) < r.streamsTTL {
		return r.missing
	}
	ctx, cancel := context.WithTimeout(ctx, r.streamsTimeout)
	defer cancel()
	present := map[string]bool{}
	names := r.deps.rt.JetStream().StreamNames(ctx)
	for name := range names.Name() {
		present[name] = true
	}
	var missing []failedCheck
	if err := names.Err(); err != nil {
		missing = []failedCheck{{Check: "stream", Name: "*", Reason: fmt.Sprintf("cannot list streams: %v", err)}}
	} else {
		for _, s := range subjects.Streams(r.deps.kinds...) {
			if !present[s.Name] {
				missing = append(missing, failedCheck{Check: "stream", Name: s.Name, Reason: "stream does not exist"})
			}
		}
		buckets := subjects.Buckets(r.deps.kinds...)
		if r.deps.fleet != nil {
			buckets = append(buckets, subjects.BucketSpec{Name: subjects.BucketLeases}, subjects.BucketSpec{Name: subjects.BucketReplicas})
		}
		for _, b := range buckets {
			if !present["KV_"+b.Name] {
				missing = append(missing, failedCheck{Check: "stream", Name: "KV_" + b.Name, Reason: "KV bucket " + b.Name + " does not exist"})
			}
		}
	}
	r.missing, r.checkedAt = missing, time.Now()
	return missing
}
