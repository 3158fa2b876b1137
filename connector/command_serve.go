package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/subjects"
)

// Label values for commands that name no served session or command: never
// the requested name itself (a flood of random names must not create series).
const unknownLabel = "_unknown"

// auditHeadBytes is how much of a request too large to be recorded is kept
// (as a JSON string) in its audit record.
const auditHeadBytes = 256

// servedSession is one source session whose commands this process answers.
type servedSession struct {
	src      Source
	host     *Host
	commands map[string]bool
	bucket   *tokenBucket    // the session's command rate limit
	auditor  *refusalAuditor // audit budget of its rate_limited refusals
	refusals zerolog.Logger  // sampled: a refused 500 Hz stream must not flood the log
	svc      micro.Service
	ctx      context.Context // the session's: commands and audits run under it

	mu       sync.Mutex
	stopping bool           // new commands are refused with shutting_down
	running  sync.WaitGroup // commands in progress
	// handlers counts command callbacks running, refusals included: micro's
	// Stop drains its subscriptions in the background, and stop returns only
	// after the last callback (they audit into the session's lanes).
	handlersClosed bool
	handlers       sync.WaitGroup
}

// serveCommands registers one NATS micro service for the session, with one
// endpoint per command on <kind>.<name>.cmd.<command>. Requests of one command
// are handled in arrival order (CONTROL trajectories depend on it).
func (r *Runtime) serveCommands(ctx context.Context, h *Host, src Source) (*servedSession, error) {
	s := &servedSession{
		src: src, host: h, commands: map[string]bool{}, ctx: ctx,
		bucket:   newTokenBucket(r.opts.CommandRate, r.opts.CommandBurst),
		refusals: h.log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second}),
	}
	s.auditor = newRefusalAuditor(ctx, func(ctx context.Context, _, _ string, rec AuditRecord) { r.emitAudit(ctx, h, rec) })
	svc, err := micro.AddService(r.opts.HighConn, micro.Config{
		Name:        "connector-" + h.kind,
		Version:     r.opts.Version,
		Description: fmt.Sprintf("commands for %s session %s", h.kind, h.name),
		Metadata:    map[string]string{"source": h.kind, "session": h.name},
	})
	if err != nil {
		return nil, fmt.Errorf("command service for %s %s: %w", h.kind, h.name, err)
	}
	s.svc = svc
	for _, name := range src.Commands() {
		s.commands[name] = true
		subject := subjects.Command(h.kind, h.name, name)
		// No queue group: while an owner is paused (SIGSTOP, a frozen VM) its
		// subscriptions outlive its lease until the server notices the dead
		// client (minutes), and in micro's default queue group half of the
		// requests would go to it and time out although the new owner runs
		// the session. Without one every holder of the endpoint gets each
		// request: the owner answers, and a resumed former owner refuses at
		// its fence (not_owner), forwarding nothing.
		if err := svc.AddEndpoint(name, r.commandHandler(s, name), micro.WithEndpointSubject(subject), micro.WithEndpointQueueGroupDisabled()); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("command endpoint %s: %w", subject, err)
		}
	}
	return s, nil
}

// refuse makes new commands fail with shutting_down and waits for the ones
// in progress.
func (s *servedSession) refuse() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.running.Wait()
}

// stop unregisters the service, waits for its callbacks (each bounded by
// the command timeout) and audits what flood refusals are still counted.
func (s *servedSession) stop(timeout time.Duration) {
	_ = s.svc.Stop()
	s.mu.Lock()
	s.handlersClosed = true
	s.mu.Unlock()
	if !waitTimeout(&s.handlers, timeout) {
		s.host.log.Warn().Dur("timeout_ms", timeout).Msg("command callbacks still running after the service stopped")
	}
	s.auditor.stop(s.ctx)
}

// enterHandler registers a running callback; false once the service has
// stopped (a late message drained by micro: no reply, the session is gone).
func (s *servedSession) enterHandler() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handlersClosed {
		return false
	}
	s.handlers.Add(1)
	return true
}

// begin registers a command in progress; false once the session is stopping.
func (s *servedSession) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.running.Add(1)
	return true
}

// commandHandler admits a request (size, rate), lets the source handle it,
// and replies, counts and audits the outcome.
func (r *Runtime) commandHandler(s *servedSession, name string) micro.HandlerFunc {
	h, ctx := s.host, s.ctx
	latency := r.opts.Metrics.commandLatency.WithLabelValues(h.kind, h.name, name)
	outcomes := r.opts.Metrics.commands.MustCurryWith(prometheus.Labels{"source": h.kind, "session": h.name, "command": name})
	return func(req micro.Request) {
		if !s.enterHandler() {
			if req.Reply() != "" {
				reply, refusal := encodeReply(nil, shuttingDown())
				_ = req.Error(statusOf(refusal.Code), refusal.Message, reply)
			}
			return
		}
		defer s.handlers.Done()
		received := time.Now()
		cmd := Command{Name: name, Body: req.Data(), WantsReply: req.Reply() != ""}
		var result any
		var err error
		if s.begin() {
			defer s.running.Done() // after the audit: stopping waits for it
			switch {
			case !s.bucket.allow(received):
				err = r.rateLimited(h.kind, h.name)
			case len(cmd.Body) > r.opts.CommandMaxBytes:
				err = Refuse(CodeRequestTooLarge, "request is %d bytes; at most %d", len(cmd.Body), r.opts.CommandMaxBytes)
			default:
				if ferr := h.Fence(); ferr != nil {
					err = Refuse(CodeNotOwner, "%s.%s: %v; nothing was forwarded; the session is moving to another replica, retry in a few seconds", h.kind, h.name, ferr)
					break
				}
				cctx, cancel := context.WithTimeout(ctx, r.opts.CommandTimeout)
				result, err = s.src.Handle(cctx, cmd)
				cancel()
			}
		} else {
			err = shuttingDown()
		}
		reply, refusal := encodeReply(result, err)
		outcome := "ok"
		if refusal != nil {
			outcome = refusal.Code
		}
		outcomes.WithLabelValues(outcome).Inc()
		ev := h.log.Debug()
		if refusal != nil {
			ev = s.refusals.Warn().Str("code", refusal.Code).Str("reason", refusal.Message)
		}
		ev.Str("command", name).Dur("took_ms", time.Since(received)).Msg("command handled")
		rec := r.auditRecordOf(cmd, received, reply)
		rec.Requester = RequesterOf(nats.Header(req.Headers()))
		// Reply before auditing: the audit record waits for room in the
		// session's high lane, and a requester must not time out (and maybe
		// retry a CONTROL that already moved the robot) because JetStream is slow.
		if cmd.WantsReply {
			var rerr error
			if refusal == nil {
				rerr = req.Respond(reply)
			} else {
				rerr = req.Error(statusOf(refusal.Code), refusal.Message, reply)
			}
			if rerr != nil {
				h.log.Warn().Err(rerr).Str("command", name).Msg("could not send the command reply")
			}
		}
		latency.Observe(time.Since(received).Seconds())
		if refusal != nil && refusal.Code == CodeRateLimited {
			s.auditor.record(ctx, h.name, refusal.Code, rec, received)
		} else {
			r.emitAudit(ctx, h, rec)
		}
	}
}

func (r *Runtime) rateLimited(kind, name string) *CommandError {
	return Refuse(CodeRateLimited, "%s session %s accepts at most %g commands per second (bursts of %d); retry later",
		kind, name, r.opts.CommandRate, r.opts.CommandBurst)
}

// statusOf is the micro error code (HTTP-like) of a refusal.
func statusOf(code string) string {
	switch code {
	case CodeInternal:
		return "500"
	case CodeRequestTooLarge:
		return "413"
	case CodeRateLimited:
		return "429"
	case CodeNotOwner:
		return "503"
	case CodeUnknownSession, CodeUnknownCommand:
		return "404"
	}
	return "400"
}

// serveKind subscribes, once per kind, to <kind>.*.cmd.* and answers at
// once the requests no endpoint of this process answers: commands a served
// session does not have (unknown_command) and sessions this process does not
// serve (unknown_session, naming the sessions it does serve), instead of
// letting the requester wait for a timeout or get "no responders". Requests
// for served commands reach this subscription too and are ignored here.
//
// Caveat: there is no session ownership or lease between connector processes
// yet. If two processes share one NATS account and serve different sessions of
// the same kind, each refuses the other's sessions as unknown, and the
// requester may get that refusal before the real reply (the command still
// runs on its owner). Such deployments set Options.QuietUnknownSessions.
func (r *Runtime) serveKind(ctx context.Context, kind string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("commands of %s: %w", kind, ErrClosed)
	}
	if r.kinds[kind] != nil {
		return nil
	}
	// The subscription outlives the session that started it.
	ctx = context.WithoutCancel(ctx)
	auditor := newRefusalAuditor(ctx, func(ctx context.Context, session, _ string, rec AuditRecord) {
		r.publishAudit(ctx, kind, session, rec)
	})
	sub, err := r.opts.HighConn.Subscribe(subjects.Command(kind, subjects.Any, subjects.Any), func(m *nats.Msg) {
		if !r.enterHandler() {
			if m.Reply != "" {
				reply, refusal := encodeReply(nil, shuttingDown())
				_ = respondError(m, refusal, reply)
			}
			return
		}
		defer r.handlers.Done()
		tokens := strings.Split(m.Subject, ".")
		if len(tokens) != 4 {
			return
		}
		name, command := tokens[1], tokens[3]
		if s := r.session(kind, name); s != nil {
			stopping, ready := r.sessionState(s)
			switch {
			case stopping:
				// Its endpoints may be gone already: nobody else answers.
				r.refuseRequest(kind, m, shuttingDown())
			case !s.served.commands[command]:
				r.refuseUnknownCommand(s.served, command, m)
			case !ready:
				// Starting: its endpoints may not be registered at the server
				// yet, so this request may have reached only this
				// subscription. Its source does not run yet, so nothing
				// can have been forwarded upstream either way.
				r.refuseRequest(kind, m, Refuse(CodeNotOwner, "%s.%s is starting on this replica; nothing was forwarded: retry in a moment", kind, name))
			}
			return
		}
		r.refuseUnknownSession(ctx, kind, name, command, m, auditor)
	})
	if err != nil {
		return fmt.Errorf("unknown-command subscription %s: %w", subjects.Command(kind, subjects.Any, subjects.Any), err)
	}
	r.kinds[kind] = func() {
		_ = sub.Unsubscribe()
		auditor.stop(ctx)
	}
	return nil
}

// refuseUnknownSession answers a command for a session this process does not
// serve: unknown_session (shutting_down once shutdown began), audited per
// kind within the flood-refusal budget.
func (r *Runtime) refuseUnknownSession(ctx context.Context, kind, name, command string, m *nats.Msg, auditor *refusalAuditor) {
	r.mu.Lock()
	stopping := r.stopping
	r.mu.Unlock()
	if r.opts.SessionOwner != nil {
		if configured, _ := r.opts.SessionOwner(kind, name); configured {
			if m.Reply != "" {
				r.refuseWithoutOwner(kind, name, m)
			}
			return
		}
	}
	if r.opts.QuietUnknownSessions && !stopping {
		return
	}
	received := time.Now()
	label := unknownLabel
	if r.kindHasCommand(kind, command) {
		label = command
	}
	refusal := Refuse(CodeUnknownSession, "%s has no session %q in this connector; sessions: %s", kind, name, r.sessionNames(kind))
	if stopping {
		refusal = shuttingDown()
	}
	reply, _ := encodeReply(nil, refusal)
	if m.Reply != "" {
		if err := respondError(m, refusal, reply); err != nil {
			r.opts.Log.Warn().Err(err).Str("source", kind).Msg("could not refuse a command for an unknown session")
		}
	}
	r.opts.Metrics.commands.WithLabelValues(kind, unknownLabel, label, refusal.Code).Inc()
	r.opts.Metrics.commandLatency.WithLabelValues(kind, unknownLabel, label).Observe(time.Since(received).Seconds())
	// Audited per kind within the flood-refusal budget (a flood of random
	// session names is summed up); the reply never waits for it.
	rec := r.auditRecordOf(Command{Name: command, Body: m.Data, WantsReply: m.Reply != ""}, received, reply)
	rec.Requester = RequesterOf(m.Header)
	auditor.record(ctx, name, refusal.Code, rec, received)
}

// refuseWithoutOwner answers a command for a session of the fleet that
// this replica does not run. If another replica holds its lease, that one
// answers (its endpoint, or its own refusal while it starts or stops the
// session). Otherwise (no holder: a handover; or this replica holds it but
// does not run it yet or any more) the answer is not_owner (shutting_down
// when this process is stopping), after OwnerGrace: a refusal racing the
// new owner's success could make the requester retry a command that ran.
func (r *Runtime) refuseWithoutOwner(kind, name string, m *nats.Msg) {
	if !r.enterHandler() {
		return
	}
	time.AfterFunc(r.opts.OwnerGrace, func() {
		defer r.handlers.Done()
		if _, owner := r.opts.SessionOwner(kind, name); owner != "" {
			return // held elsewhere: the holder answers
		}
		r.mu.Lock()
		stopping := r.stopping
		r.mu.Unlock()
		refusal := Refuse(CodeNotOwner, "no replica runs %s.%s right now (it is moving between replicas); nothing was forwarded: retry in a moment", kind, name)
		if stopping {
			refusal = shuttingDown()
		}
		r.refuseRequest(kind, m, refusal)
		r.opts.Metrics.commands.WithLabelValues(kind, unknownLabel, unknownLabel, refusal.Code).Inc()
	})
}

// refuseRequest answers a request (not a plain publish) with refusal; a
// reply that cannot be sent is logged.
func (r *Runtime) refuseRequest(kind string, m *nats.Msg, refusal *CommandError) {
	if m.Reply == "" {
		return
	}
	reply, _ := encodeReply(nil, refusal)
	if err := respondError(m, refusal, reply); err != nil {
		r.opts.Log.Warn().Err(err).Str("source", kind).Str("code", refusal.Code).Msg("could not send a command refusal")
	}
}

// sessionState reports whether a session's stop has begun, and whether its
// start has finished (its command endpoints confirmed by the server).
func (r *Runtime) sessionState(s *running) (stopping, ready bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.stopping, s.ready
}

// kindHasCommand reports whether a running session of kind serves command
// (the metric label of refusals for unknown sessions: never a requester's
// arbitrary name).
func (r *Runtime) kindHasCommand(kind, command string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		if s.spec.Kind == kind && s.served != nil && s.served.commands[command] {
			return true
		}
	}
	return false
}

// refuseUnknownCommand answers a command a served session does not have,
// within the session's rate limit.
func (r *Runtime) refuseUnknownCommand(s *servedSession, command string, m *nats.Msg) {
	h, ctx := s.host, s.ctx
	received := time.Now()
	refusal := Refuse(CodeUnknownCommand, "%s has no command %q; commands: %s",
		h.kind, command, strings.Join(s.src.Commands(), ", "))
	if !s.bucket.allow(received) {
		refusal = r.rateLimited(h.kind, h.name)
	}
	reply, _ := encodeReply(nil, refusal)
	if m.Reply != "" {
		if err := respondError(m, refusal, reply); err != nil {
			h.log.Warn().Err(err).Msg("could not refuse an unknown command")
		}
	}
	r.opts.Metrics.commands.WithLabelValues(h.kind, h.name, unknownLabel, refusal.Code).Inc()
	r.opts.Metrics.commandLatency.WithLabelValues(h.kind, h.name, unknownLabel).Observe(time.Since(received).Seconds())
	rec := r.auditRecordOf(Command{Name: command, Body: m.Data, WantsReply: m.Reply != ""}, received, reply)
	rec.Requester = RequesterOf(m.Header)
	if refusal.Code == CodeRateLimited {
		s.auditor.record(ctx, h.name, refusal.Code, rec, received)
		return
	}
	r.emitAudit(ctx, h, rec)
}

// respondError replies with a refusal the way micro endpoints do (status
// headers and the JSON body), so clients see one format.
// shuttingDown refuses commands once shutdown has begun.
func shuttingDown() *CommandError {
	return Refuse(CodeShuttingDown, "the connector is shutting down")
}

func respondError(m *nats.Msg, refusal *CommandError, reply []byte) error {
	resp := nats.NewMsg(m.Reply)
	resp.Data = reply
	resp.Header.Set(micro.ErrorHeader, refusal.Message)
	resp.Header.Set(micro.ErrorCodeHeader, statusOf(refusal.Code))
	return m.RespondMsg(resp)
}

// encodeReply builds {"ok":true,...fields of result} or {"ok":false,"error":{...}}.
func encodeReply(result any, err error) ([]byte, *CommandError) {
	if err != nil {
		var ce *CommandError
		if !errors.As(err, &ce) {
			ce = &CommandError{Code: CodeInternal, Message: err.Error()}
		}
		b, _ := json.Marshal(struct {
			OK    bool          `json:"ok"`
			Error *CommandError `json:"error"`
		}{false, ce})
		return b, ce
	}
	if result == nil {
		return []byte(`{"ok":true}`), nil
	}
	body, merr := json.Marshal(result)
	if merr != nil || len(body) < 2 || body[0] != '{' {
		return encodeReply(nil, fmt.Errorf("command result is not a JSON object: %v", merr))
	}
	if len(body) == 2 { // {}
		return []byte(`{"ok":true}`), nil
	}
	out := make([]byte, 0, len(body)+10)
	out = append(out, `{"ok":true,`...)
	return append(out, body[1:]...), nil
}

// auditRecordOf builds the audit record of a handled command. A request
// larger than CommandMaxBytes is kept only as its size and first bytes.
func (r *Runtime) auditRecordOf(cmd Command, received time.Time, reply []byte) AuditRecord {
	rec := AuditRecord{
		Command:    cmd.Name,
		Received:   received.UTC(),
		DurationMS: float64(time.Since(received).Microseconds()) / 1000,
		WantsReply: cmd.WantsReply,
		Reply:      reply,
	}
	switch {
	case len(cmd.Body) > r.opts.CommandMaxBytes:
		rec.Request, _ = json.Marshal(string(cmd.Body[:min(len(cmd.Body), auditHeadBytes)]))
		rec.RequestBytes = len(cmd.Body)
	case len(cmd.Body) == 0:
		rec.Request = json.RawMessage("{}")
	case json.Valid(cmd.Body):
		rec.Request = json.RawMessage(cmd.Body)
	default:
		rec.Request, _ = json.Marshal(string(cmd.Body))
	}
	return rec
}

// emitAudit records a command of a served session on
// <kind>.<name>.audit.<command> (stream CONNECTOR_AUDIT), through its high lane.
func (r *Runtime) emitAudit(ctx context.Context, h *Host, rec AuditRecord) {
	if err := h.Audit(ctx, rec); err != nil {
		h.log.Error().Err(err).Str("command", rec.Command).Msg("could not record the command in the audit stream")
	}
}

// publishAudit records a command for a session this process does not serve
// (no host, no lane): published straight to JetStream, bounded by AckTimeout.
// The session token comes from a subject, so it is already one token; Token
// still caps its length.
func (r *Runtime) publishAudit(ctx context.Context, kind, session string, rec AuditRecord) {
	payload, err := json.Marshal(rec)
	if err != nil {
		r.opts.Log.Error().Err(err).Msg("could not encode the audit record")
		return
	}
	session = subjects.Token(session)
	msg := nats.NewMsg(subjects.Audit(kind, session, rec.Command))
	msg.Data = payload
	msg.Header.Set(subjects.HeaderSource, kind)
	msg.Header.Set(subjects.HeaderSession, session)
	msg.Header.Set(subjects.HeaderType, "audit")
	msg.Header.Set(subjects.HeaderReceived, time.Now().UTC().Format(time.RFC3339Nano))
	msg.Header.Set(subjects.HeaderMsgID, kind+"."+session+"."+r.runID+".audit."+nuid.Next())
	pctx, cancel := context.WithTimeout(ctx, r.opts.AckTimeout)
	defer cancel()
	if _, err := r.highJS.PublishMsg(pctx, msg); err != nil {
		r.opts.Log.Error().Err(err).Str("source", kind).Str("command", rec.Command).
			Msg("could not record a command for an unknown session in the audit stream")
	}
}
