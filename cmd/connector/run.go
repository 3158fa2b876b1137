package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/internal/procscale"
	"github.com/jetbridge/connector/subjects"
)

// runConnector is `connector run`: everything from the environment.
func runConnector(ctx context.Context) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, cfg.LogFormat, stdoutFile())
	kinds := builtinKinds()
	ret, err := retention(kinds)
	if err != nil {
		return err
	}
	sel, err := configuredSources(cfg, kinds)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, ret, sel, log, nil)
}

// serve starts NATS (or connects to it), provisions the selected kinds'
// streams and buckets and runs their sessions until ctx ends. ready, if set,
// is called once the command subjects are served.
func serve(ctx context.Context, cfg Config, ret func(subjects.StreamSpec) connector.Retention,
	sel selection, log zerolog.Logger, ready func(rt *connector.Runtime, natsURL string),
) error {
	url, embedded, err := startNATS(cfg, log)
	if err != nil {
		return err
	}
	if embedded != nil {
		defer embedded.Stop()
	}
	high, err := connectNATS(url, cfg.NATSConfig, "high", log)
	if err != nil {
		return err
	}
	defer high.Close()
	low, err := connectNATS(url, cfg.NATSConfig, "low", log)
	if err != nil {
		return err
	}
	defer low.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kinds := subjectKinds(sel.kinds)
	replica := cfg.replicaName()
	log = log.With().Str("replica", replica).Logger()
	// The Go scheduler's processors follow the CPU the process uses
	// (internal/procscale), unless GOMAXPROCS is set.
	procs := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "connector_gomaxprocs",
		Help: "Go scheduler processors (GOMAXPROCS) now: between 1 and the cores or CPU limit, following the CPU the connector uses, unless GOMAXPROCS is set.",
	})
	reg.MustRegister(procs)
	procsLog := log // the goroutine's own copy of the logger
	procsCtx, stopProcs := context.WithCancel(ctx)
	var procsDone sync.WaitGroup
	procsDone.Go(func() { procscale.Run(procsCtx, procscale.Options{Gauge: procs, Log: procsLog}) })
	defer procsDone.Wait()
	defer stopProcs()
	configured := map[string]bool{}
	for _, s := range sel.sessions {
		configured[s.Key()] = true
	}
	var fleetRef atomic.Pointer[connector.Fleet] // set once the fleet exists (it needs the runtime)
	rt, err := provision(ctx, connector.Options{
		HighConn: high, LowConn: low, Kinds: kinds, Retention: ret, KVReplicas: cfg.KVReplicas,
		Window: cfg.PublishWindow, AckTimeout: cfg.AckTimeout, DrainTimeout: cfg.DrainTimeout,
		CommandTimeout: cfg.CommandTimeout, Version: version, SingleLane: cfg.SingleLane, LowLanePerMessage: !cfg.FastBatch,
		LowLaneNoReceived: !cfg.LowLaneReceived, LowLaneKeepLatest: cfg.LowLaneShed == "latest",
		CommandMaxBytes: cfg.CommandMaxBytes, CommandRate: cfg.CommandRate, CommandBurst: cfg.CommandBurst,
		QuietUnknownSessions: cfg.QuietUnknownSessions,
		// Every replica has the same configuration: a configured session this
		// process does not run is its owner's to answer (or nobody's during a
		// handover: not_owner).
		SessionOwner: func(kind, name string) (bool, string) {
			key := subjects.SessionKey(kind, name)
			f := fleetRef.Load()
			if !configured[key] || f == nil {
				return configured[key], ""
			}
			owner := f.Holder(key)
			if owner == replica {
				owner = "" // held here but not running (starting or stopping): nobody answers
			}
			return true, owner
		},
		Metrics: connector.NewMetrics(reg), Log: log,
	}, log)
	if err != nil {
		return err
	}
	defer rt.Close() // idempotent: covers the error returns before Run
	fleet, members, err := startFleet(ctx, rt, cfg, replica, sel.sessions, reg, log)
	if err != nil {
		return err
	}
	fleetRef.Store(fleet)
	if cfg.HTTPAddr != "" {
		stopHTTP, err := startHTTP(cfg.HTTPAddr, httpDeps{
			reg: reg, rt: rt, fleet: fleet, replica: replica,
			conns: map[string]*nats.Conn{"high": high, "low": low}, kinds: kinds,
		}, log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	for _, s := range sel.sessions {
		log.Info().Str("source", s.Kind).Str("session", s.Name).
			Str("commands", subjects.Command(s.Kind, s.Name, subjects.Any)).Msg("configured source; running it once its lease is held")
	}
	var readyDone sync.WaitGroup
	defer readyDone.Wait()
	if ready != nil {
		readyDone.Go(func() {
			select {
			case <-rt.Serving():
			case <-ctx.Done():
				return
			}
			select {
			case <-fleet.Settled(): // the sessions whose lease was free run
				ready(rt, url)
			case <-ctx.Done():
			}
		})
	}
	// The runtime serves the sessions the fleet starts and stops. At the
	// end (ctx, or the runtime stopping because a source failed) the fleet
	// stops its sessions and releases their leases first; only then does
	// the runtime stop answering on the kinds' command subjects, so that a
	// request during the handover gets an answer (shutting_down, not_owner)
	// from the replica that still holds the lease.
	rtCtx, stopRuntime := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRuntime()
	runErr := make(chan error, 1)
	go func() { runErr <- rt.Run(rtCtx) }()
	membersCtx, stopMembers := context.WithCancel(ctx)
	var membersDone sync.WaitGroup
	membersDone.Go(func() { members.Run(membersCtx) })
	fleetErr := fleet.Run(ctx)
	stopRuntime()
	err = <-runErr
	if fleetErr != nil && err == nil {
		err = fleetErr // it could not start (the leases bucket unreadable): the process fails
	}
	stopMembers()
	membersDone.Wait()
	log.Info().Msg("connector stopped")
	return err
}

// startFleet provisions the leases bucket and prepares this replica's fleet
// over the configured sessions: each runs here only while this replica holds
// its lease in CONNECTOR_LEASES.
func startFleet(ctx context.Context, rt *connector.Runtime, cfg Config, replica string,
	sessions []connector.Session, reg prometheus.Registerer, log zerolog.Logger,
) (*connector.Fleet, *connector.Members, error) {
	var kv, mkv jetstream.KeyValue
	err := provisionRetrying(ctx, log, "could not provision the fleet's buckets; retrying", func(ctx context.Context) (err error) {
		kv, err = connector.ProvisionLeases(ctx, rt.JetStream(), cfg.LeaseTTL, cfg.KVReplicas)
		if errors.Is(err, connector.ErrLeaseTTLMismatch) {
			return badConfig("CONNECTOR_LEASE_TTL=%s: %v; every replica must use the same TTL (to change it, stop every replica, then: nats kv del %s)",
				cfg.LeaseTTL, err, subjects.BucketLeases)
		}
		if err != nil {
			return err
		}
		mkv, err = connector.ProvisionMembers(ctx, rt.JetStream(), cfg.LeaseTTL, cfg.KVReplicas)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	keys := make([]string, len(sessions))
	for i, s := range sessions {
		keys[i] = s.Key()
	}
	members, err := connector.NewMembers(mkv, connector.MembersOptions{
		Replica: replica, Sessions: keys, Heartbeat: cfg.LeaseTTL / 4, Settle: cfg.LeaseTTL / 3, Log: log,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info().Dur("lease_ttl_ms", cfg.LeaseTTL).Msg("fleet: taking the leases of the configured sessions")
	fleet, err := connector.NewFleet(rt, kv, sessions, connector.FleetOptions{
		Replica: replica, TTL: cfg.LeaseTTL, Members: members, Metrics: connector.NewFleetMetrics(reg), Log: log,
	})
	return fleet, members, err
}

// provision creates the runtime, retrying while NATS or JetStream is not
// reachable yet, so the connector can start before its server.
func provision(ctx context.Context, opts connector.Options, log zerolog.Logger) (*connector.Runtime, error) {
	if err := waitConnected(ctx, opts.HighConn, log); err != nil {
		return nil, err
	}
	var rt *connector.Runtime
	err := provisionRetrying(ctx, log, "could not provision streams and KV buckets; is JetStream enabled?", func(ctx context.Context) (err error) {
		rt, err = connector.New(ctx, opts)
		return err
	})
	return rt, err
}

// provisionRetrying runs create until it succeeds, retrying (100 ms doubling
// to 5 s, each attempt bounded by 10 s) while NATS, JetStream or the
// cluster's placement is not there yet; a replica count the server can never
// hold, or another configuration error, ends it at once.
func provisionRetrying(ctx context.Context, log zerolog.Logger, what string, create func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := create(pctx)
		cancel()
		var ce *configError
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("provisioning: %w", ctx.Err())
		case errors.As(err, &ce):
			return err
		}
		var re *connector.ReplicasError
		if errors.As(err, &re) {
			if re.Permanent {
				return replicasConfigError(re)
			}
			log.Warn().Err(err).Str("variable", replicasVariable(re)).Int("replicas", re.Replicas).Dur("retry_in_ms", wait).
				Msg("the cluster cannot place this many replicas now (too few servers up, or no room); retrying")
		} else {
			log.Warn().Err(err).Dur("retry_in_ms", wait).Msg(what)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("provisioning: %w", ctx.Err())
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// replicasConfigError words a replica count a server that is not clustered
// cannot hold, naming the variable.
func replicasConfigError(re *connector.ReplicasError) error {
	return badConfig("%s=%d: the NATS server is not clustered, so streams and buckets hold 1 replica (%v)", replicasVariable(re), re.Replicas, re.Err)
}

// replicasVariable names the variable that sets a ReplicasError's count.
func replicasVariable(re *connector.ReplicasError) string {
	if re.Stream != "" {
		return "STREAM_" + re.Stream + "_REPLICAS"
	}
	return "CONNECTOR_KV_REPLICAS"
}
