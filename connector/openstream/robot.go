package openstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// StateStreaming is published (besides the core's states) when the first data
// of a monitor connection arrives after a (re)connect; its detail carries
// gap_ms, the time without data across the reconnect.
const StateStreaming = "streaming"

// StateIdle is published when a robot has no connection to keep: no monitor
// and CONTROL disabled.
const StateIdle = "idle"

// DefaultMonitor is the monitor name used when a command or the
// configuration gives none.
const DefaultMonitor = "default"

// KV keys in subjects.BucketDesired (scoped by the host to openstream.<robot>.).
const (
	keyMonitorPrefix = "monitor."
	// keySeeded marks that the configured monitors were stored once: from then
	// on the KV is the desired state and the environment is not read again, so
	// a monitor stopped by command stays stopped across restarts.
	keySeeded = "seeded"
)

// Robot is the connector.Source of one Hi6 controller. It owns one TCP
// connection per named monitor (the protocol allows one MONITOR per
// connection) and, when CONTROL is allowed, one control connection that
// carries CONTROL and STOP control. It assumes the controller accepts that many
// concurrent connections; a refusal shows as a "reconnecting" status of the
// refused connection with the reason.
type Robot struct {
	cfg          RobotConfig
	common       Config
	host         *connector.Host
	log          zerolog.Logger
	malformedLog zerolog.Logger // sampled: a garbage stream must not flood the log
	desiredKV    *connector.Store

	ready   chan struct{} // closed once Run has loaded the desired state
	cmdMu   sync.Mutex    // serializes monitor and stop: they change desired state
	runDone chan struct{}

	mu         sync.Mutex
	runCtx     context.Context
	emitCtx    context.Context // Run's ctx, outlived by emitGrace at shutdown
	closing    bool
	stopped    bool // after STOP session, until a monitor command
	desired    map[string]Recipe
	monitors   map[string]*conn
	control    *conn
	connStates map[string]string
	connOwner  map[string]*conn // which conn owns an id in connStates (ids are reused)
	wg         sync.WaitGroup
}

// New builds the source of one robot on host, the runtime's host of the
// session RobotSession declares. Validate the Config first.
func New(robot RobotConfig, common Config, host *connector.Host) (*Robot, error) {
	if host == nil {
		return nil, errors.New("openstream: a host is required")
	}
	if !validName(robot.Name) {
		return nil, fmt.Errorf("openstream: robot name %q may hold only letters, digits, '-' and '_'", robot.Name)
	}
	if robot.Addr == "" {
		return nil, fmt.Errorf("openstream: robot %s has no address", robot.Name)
	}
	if common.MaxLine <= 0 || common.AckTimeout <= 0 || common.ControlQueue <= 0 || common.StallPeriods <= 0 ||
		common.StallMin <= 0 || common.BackoffMin <= 0 || common.HandshakeRetryMin <= 0 || common.WriteTimeout <= 0 ||
		common.DialTimeout <= 0 {
		return nil, errors.New("openstream: configuration is incomplete (start from Defaults or envconfig, then Validate)")
	}
	log := host.Log().With().Str("robot", robot.Name).Logger()
	return &Robot{
		cfg: robot, common: common, host: host, log: log,
		malformedLog: log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second}),
		desiredKV:    host.State(subjects.BucketDesired),
		ready:        make(chan struct{}),
		runDone:      make(chan struct{}),
		desired:      map[string]Recipe{},
		monitors:     map[string]*conn{},
		connStates:   map[string]string{},
		connOwner:    map[string]*conn{},
	}, nil
}

// Command names, served on openstream.<robot>.cmd.<command>.
const (
	CommandMonitor = "monitor"
	CommandControl = "control"
	CommandStop    = "stop"
)

// Commands implements connector.Source.
func (r *Robot) Commands() []string { return commandNames() }

// commandNames lists the commands served on openstream.<robot>.cmd.<command>.
func commandNames() []string { return []string{CommandMonitor, CommandControl, CommandStop} }

// Run loads the desired monitors, keeps every connection up until ctx ends,
// then stops them gracefully (STOP session on each).
func (r *Robot) Run(ctx context.Context) error {
	defer close(r.runDone)
	desired, err := r.loadDesired(ctx)
	if err != nil {
		return nil // ctx ended while KV was unreachable
	}
	// Upstream lines are emitted with emitCtx: Run's ctx, extended at shutdown
	// so that what the connections read while saying goodbye (stop_ack) is
	// queued while the lanes still drain. A reader blocked on a full high lane
	// gives up (logged) only emitGrace after shutdown began: by then NATS is
	// not draining, and the core's drain would abandon the event anyway.
	emitCtx, stopEmit := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEmit()
	r.mu.Lock()
	r.runCtx = ctx
	r.emitCtx = emitCtx
	r.desired = desired
	idle := r.startAllLocked()
	r.mu.Unlock()
	close(r.ready)
	if idle {
		r.host.Report(connector.Status{State: StateIdle, Reason: "no monitor configured and CONTROL disabled"})
	}

	<-ctx.Done()
	grace := time.AfterFunc(r.emitGrace(), stopEmit)
	defer grace.Stop()
	r.mu.Lock()
	r.closing = true
	for _, c := range r.allConnsLocked() {
		c.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.host.Report(connector.Status{State: connector.StateStopped, Reason: "shutdown"})
	return nil
}

// emitGrace is how long upstream lines may still wait for room in the high
// lane after shutdown began: the STOP session exchange, plus a second.
func (r *Robot) emitGrace() time.Duration { return r.common.StopTimeout + time.Second }

// loadDesired reads the desired monitors from KV, seeding them from the
// configuration on the very first start. KV errors are retried (1 s doubling
// to 10 s) until ctx ends; the first one is also reported as a status.
func (r *Robot) loadDesired(ctx context.Context) (map[string]Recipe, error) {
	// KV is unavailable for seconds while JetStream elects a leader or NATS
	// reconnects: retrying every few seconds is soon enough.
	bo := connector.Backoff{Base: time.Second, Max: 10 * time.Second}
	var desired map[string]Recipe
	reported := false
	err := connector.Retry(ctx, bo, func(ctx context.Context) (err error) {
		desired, err = r.tryLoadDesired(ctx)
		return err
	}, func(err error, wait time.Duration) {
		r.log.Error().Err(err).Dur("retry_in_ms", wait).Msg("cannot read the desired monitors from KV; retrying")
		if !reported {
			reported = true
			r.host.Report(connector.Status{State: connector.StateDisconnected, Reason: "desired state unavailable: " + err.Error()})
		}
	})
	return desired, err
}

// desiredMonitor is the value of a desired monitor in KV, the same shape as
// LaserSell's desired configure: what, who last set it, when.
type desiredMonitor struct {
	Monitor *Recipe `json:"monitor"`
	// Origin says what last set it: "env" or "command:monitor".
	Origin    string `json:"origin"`
	UpdatedAt string `json:"updated_at"`
}

// decodeDesired reads a desired monitor: the documented shape, or the bare
// recipe that earlier versions stored.
func decodeDesired(val []byte) (Recipe, error) {
	var doc desiredMonitor
	if err := json.Unmarshal(val, &doc); err != nil {
		return Recipe{}, err
	}
	if doc.Monitor != nil {
		return *doc.Monitor, nil
	}
	var rec Recipe
	err := json.Unmarshal(val, &rec)
	return rec, err
}

func (r *Robot) tryLoadDesired(ctx context.Context) (map[string]Recipe, error) {
	kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	entries, err := r.desiredKV.List(kctx)
	if err != nil {
		return nil, err
	}
	desired := map[string]Recipe{}
	if _, seeded := entries[keySeeded]; !seeded {
		// First start, or an operator deleted the seeded mark to re-seed:
		// the configuration's monitors replace whatever KV holds.
		for key := range entries {
			if name, ok := strings.CutPrefix(key, keyMonitorPrefix); ok && !hasMonitor(r.cfg.Monitors, name) {
				if err := r.desiredKV.Delete(kctx, key); err != nil {
					return nil, err
				}
			}
		}
		for name, rec := range r.cfg.Monitors {
			if err := r.putDesired(kctx, name, rec, "env"); err != nil {
				return nil, err
			}
			desired[name] = rec
		}
		if err := r.desiredKV.Put(kctx, keySeeded, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
			return nil, err
		}
		r.log.Info().Int("monitors", len(desired)).Msg("desired monitors seeded from the configuration")
		return desired, nil
	}
	for key, val := range entries {
		name, ok := strings.CutPrefix(key, keyMonitorPrefix)
		if !ok {
			continue
		}
		rec, err := decodeDesired(val)
		if err != nil || !validName(name) {
			r.log.Error().Str("key", key).Msg("ignoring an unreadable desired monitor in KV")
			continue
		}
		norm, _, cerr := rec.normalize()
		if cerr != nil {
			r.log.Error().Str("key", key).Str("problem", cerr.Message).Msg("ignoring an invalid desired monitor in KV")
			continue
		}
		desired[name] = norm
	}
	r.log.Info().Int("monitors", len(desired)).Msg("desired monitors restored from KV")
	if !sameMonitors(r.cfg.Monitors, desired) {
		r.log.Warn().Strs("configured", sortedKeys(r.cfg.Monitors)).Strs("kv", sortedKeys(desired)).
			Str("reseed", "nats kv del "+subjects.BucketDesired+" "+subjects.SessionKey(r.host.Kind(), r.host.Name())+"."+keySeeded).
			Msg("OPENSTREAM_MONITORS differs from the desired monitors in KV; KV wins (latest operator intent). To make the configuration win, delete the seeded mark and restart")
	}
	return desired, nil
}

func hasMonitor(m map[string]Recipe, name string) bool {
	_, ok := m[name]
	return ok
}

// sameMonitors reports whether two sets of monitors are the same.
func sameMonitors(a, b map[string]Recipe) bool {
	if len(a) != len(b) {
		return false
	}
	for name, ra := range a {
		rb, ok := b[name]
		if !ok {
			return false
		}
		na, _, errA := ra.normalize()
		if errA != nil || !recipeEqual(na, rb) {
			return false
		}
	}
	return true
}

// putDesired stores a desired monitor; origin says what set it ("env" or
// "command:monitor").
func (r *Robot) putDesired(ctx context.Context, name string, rec Recipe, origin string) error {
	b, err := json.Marshal(desiredMonitor{Monitor: &rec, Origin: origin, UpdatedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	if err != nil {
		return fmt.Errorf("encode monitor %s: %w", name, err)
	}
	return r.desiredKV.Put(ctx, keyMonitorPrefix+name, b)
}

// startAllLocked starts the control connection and one connection per
// desired monitor. r.mu is held. It reports whether the robot has nothing to
// keep open.
func (r *Robot) startAllLocked() (idle bool) {
	if len(r.cfg.ControlAllow) > 0 && r.control == nil {
		r.control = r.launchLocked(newConn(r, "", Recipe{}))
	}
	for _, name := range sortedKeys(r.desired) {
		if r.monitors[name] == nil {
			r.monitors[name] = r.launchLocked(newConn(r, name, r.desired[name]))
		}
	}
	return r.control == nil && len(r.monitors) == 0
}

// launchLocked starts the goroutine of c. r.mu is held and r is not closing.
func (r *Robot) launchLocked(c *conn) *conn {
	ctx, cancel := context.WithCancel(r.runCtx)
	c.cancel, c.emitCtx = cancel, r.emitCtx
	r.connStates[c.id] = connector.StateConnecting
	r.connOwner[c.id] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		c.run(ctx)
	}()
	return c
}

func (r *Robot) allConnsLocked() []*conn {
	var out []*conn
	if r.control != nil {
		out = append(out, r.control)
	}
	for _, c := range r.monitors {
		out = append(out, c)
	}
	return out
}

// report publishes one connection's lifecycle change; the detail carries the
// state of every connection of the robot.
func (r *Robot) report(c *conn, state, reason string, attempt int, backoffD time.Duration, extra map[string]any) {
	r.mu.Lock()
	switch {
	case r.connOwner[c.id] != c:
		// A successor with the same id runs already; this one only reports.
	case state == connector.StateStopped:
		delete(r.connStates, c.id)
		delete(r.connOwner, c.id)
	default:
		r.connStates[c.id] = state
	}
	conns := maps.Clone(r.connStates)
	all := len(conns) > 0
	for _, s := range conns {
		all = all && (s == connector.StateConnected || s == StateStreaming)
	}
	r.mu.Unlock()
	if all {
		r.host.Metrics().Connected.Set(1)
	} else {
		r.host.Metrics().Connected.Set(0)
	}
	detail := map[string]any{"conn": c.id, "connections": conns}
	if c.monitor != "" {
		detail["monitor"] = c.monitor
	}
	maps.Copy(detail, extra)
	// The upstream session is the controller's session of the connection
	// that changed, when it has one.
	upstream, _ := extra["session"].(string)
	r.host.Report(connector.Status{
		State: state, Reason: reason, Attempt: attempt, BackoffMS: backoffD.Milliseconds(),
		UpstreamSession: upstream, Detail: detail,
	})
}

// Handle implements connector.Source.
func (r *Robot) Handle(ctx context.Context, cmd connector.Command) (any, error) {
	select {
	case <-r.ready:
	case <-r.runDone:
		return nil, connector.Refuse(connector.CodeShuttingDown, "robot %s is shutting down", r.cfg.Name)
	case <-ctx.Done():
		return nil, connector.Refuse(connector.CodeTimeout, "robot %s is still starting", r.cfg.Name)
	}
	switch cmd.Name {
	case CommandMonitor:
		return r.cmdMonitor(ctx, cmd.Body)
	case CommandControl:
		return r.cmdControl(ctx, cmd)
	case CommandStop:
		return r.cmdStop(ctx, cmd.Body)
	}
	return nil, connector.Refuse(connector.CodeUnknownCommand, "unknown command %q", cmd.Name)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
