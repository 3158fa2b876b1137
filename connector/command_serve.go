package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
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
}

// serveAll registers every source's command service, then one subscription
// per source kind that refuses commands for unknown sessions and commands.
// stop unregisters them all and audits what flood refusals are still counted.
func (r *Runtime) serveAll(ctx context.Context, sources []Source) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
		stops = nil
	}
	byKind := map[string]map[string]*servedSession{}
	for _, src := range sources {
		s, stopSvc, err := r.serveCommands(ctx, src)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, stopSvc)
		if byKind[src.Kind()] == nil {
			byKind[src.Kind()] = map[string]*servedSession{}
		}
		byKind[src.Kind()][src.Name()] = s
	}
	for kind, sessions := range byKind {
		stopKind, err := r.serveUnknown(ctx, kind, sessions)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, stopKind)
	}
	return stop, nil
}

// serveCommands registers one NATS micro service per source session, with one
// endpoint per command on <kind>.<name>.cmd.<command>. Requests of one command
// are handled in arrival order (CONTROL trajectories depend on it).
func (r *Runtime) serveCommands(ctx context.Context, src Source) (*servedSession, func(), error) {
	h := r.host(src.Kind(), src.Name())
	if h == nil {
		return nil, nil, fmt.Errorf("%s %s has no host: create it with NewHost", src.Kind(), src.Name())
	}
	s := &servedSession{
		src: src, host: h, commands: map[string]bool{},
		bucket:   newTokenBucket(r.opts.CommandRate, r.opts.CommandBurst),
		refusals: h.log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second}),
	}
	s.auditor = newRefusalAuditor(ctx, func(ctx context.Context, _, _ string, rec auditRecord) { r.emitAudit(ctx, h, rec) })
	svc, err := micro.AddService(r.opts.HighConn, micro.Config{
		Name:        "connector-" + src.Kind(),
		Version:     r.opts.Version,
		Description: fmt.Sprintf("commands for %s session %s", src.Kind(), src.Name()),
		Metadata:    map[string]string{"source": src.Kind(), "session": src.Name()},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("command service for %s %s: %w", src.Kind(), src.Name(), err)
	}
	for _, name := range src.Commands() {
		s.commands[name] = true
		subject := subjects.Command(src.Kind(), src.Name(), name)
		if err := svc.AddEndpoint(name, r.commandHandler(ctx, s, name), micro.WithEndpointSubject(subject)); err != nil {
			_ = svc.Stop()
			return nil, nil, fmt.Errorf("command endpoint %s: %w", subject, err)
		}
	}
	return s, func() {
		_ = svc.Stop()
		s.auditor.stop(ctx)
	}, nil
}

// commandHandler admits a request (size, rate), lets the source handle it,
// and replies, counts and audits the outcome.
func (r *Runtime) commandHandler(ctx context.Context, s *servedSession, name string) micro.HandlerFunc {
	h := s.host
	latency := r.opts.Metrics.commandLatency.WithLabelValues(h.kind, h.name, name)
	outcomes := r.opts.Metrics.commands.MustCurryWith(prometheus.Labels{"source": h.kind, "session": h.name, "command": name})
	return func(req micro.Request) {
		if !r.enterHandler() {
			if req.Reply() != "" {
				reply, refusal := encodeReply(nil, shuttingDown())
				_ = req.Error(statusOf(refusal.Code), refusal.Message, reply)
			}
			return
		}
		defer r.handlers.Done()
		received := time.Now()
		cmd := Command{Name: name, Body: req.Data(), WantsReply: req.Reply() != ""}
		var result any
		var err error
		if r.beginCommand() {
			defer r.commands.Done() // after the audit: shutdown waits for it
			switch {
			case !s.bucket.allow(received):
				err = r.rateLimited(h.kind, h.name)
			case len(cmd.Body) > r.opts.CommandMaxBytes:
				err = Refuse(CodeRequestTooLarge, "request is %d bytes; at most %d", len(cmd.Body), r.opts.CommandMaxBytes)
			default:
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
		ev.Str("command", name).Dur("took", time.Since(received)).Msg("command handled")
		rec := r.auditRecordOf(cmd, received, reply)
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
	case CodeUnknownSession, CodeUnknownCommand:
		return "404"
	}
	return "400"
}

// serveUnknown subscribes to <kind>.*.cmd.* and answers, at once, the
// requests no endpoint of this process answers: commands a served session
// does not have (unknown_command) and sessions this process does not serve
// (unknown_session, naming the sessions it does serve), instead of letting
// the requester wait for a timeout or get "no responders". Requests for
// served commands reach this subscription too and are ignored here.
//
// Caveat: there is no session ownership or lease between connector processes
// yet. If two processes share one NATS account and serve different sessions of
// the same kind, each refuses the other's sessions as unknown, and the
// requester may get that refusal before the real reply (the command still
// runs on its owner). Such deployments set Options.QuietUnknownSessions.
func (r *Runtime) serveUnknown(ctx context.Context, kind string, sessions map[string]*servedSession) (func(), error) {
	names := make([]string, 0, len(sessions))
	kindCommands := map[string]bool{}
	for name, s := range sessions {
		names = append(names, name)
		for c := range s.commands {
			kindCommands[c] = true
		}
	}
	slices.Sort(names)
	known := strings.Join(names, ", ")
	auditor := newRefusalAuditor(ctx, func(ctx context.Context, session, _ string, rec auditRecord) {
		r.publishAudit(ctx, kind, session, rec)
	})
	sub, err := r.opts.HighConn.Subscribe(subjects.Command(kind, "*", "*"), func(m *nats.Msg) {
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
		if s, ok := sessions[name]; ok {
			if !s.commands[command] {
				r.refuseUnknownCommand(ctx, s, command, m)
			}
			return
		}
		if r.opts.QuietUnknownSessions {
			return
		}
		received := time.Now()
		label := unknownLabel
		if kindCommands[command] {
			label = command
		}
		refusal := Refuse(CodeUnknownSession, "%s has no session %q in this connector; sessions: %s", kind, name, known)
		reply, _ := encodeReply(nil, refusal)
		if m.Reply != "" {
			if err := respondError(m, refusal, reply); err != nil {
				r.opts.Log.Warn().Err(err).Str("source", kind).Msg("could not refuse a command for an unknown session")
			}
		}
		r.opts.Metrics.commands.WithLabelValues(kind, unknownLabel, label, CodeUnknownSession).Inc()
		r.opts.Metrics.commandLatency.WithLabelValues(kind, unknownLabel, label).Observe(time.Since(received).Seconds())
		// Audited per kind within the flood-refusal budget (a flood of random
		// session names is summed up); the reply never waits for it.
		rec := r.auditRecordOf(Command{Name: command, Body: m.Data, WantsReply: m.Reply != ""}, received, reply)
		auditor.record(ctx, name, CodeUnknownSession, rec, received)
	})
	if err != nil {
		return nil, fmt.Errorf("unknown-command subscription %s: %w", subjects.Command(kind, "*", "*"), err)
	}
	return func() {
		_ = sub.Unsubscribe()
		auditor.stop(ctx)
	}, nil
}

// refuseUnknownCommand answers a command a served session does not have,
// within the session's rate limit.
func (r *Runtime) refuseUnknownCommand(ctx context.Context, s *servedSession, command string, m *nats.Msg) {
	h := s.host
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
func (r *Runtime) auditRecordOf(cmd Command, received time.Time, reply []byte) auditRecord {
	rec := auditRecord{
		Command:    cmd.Name,
		Received:   received.UTC().Format(time.RFC3339Nano),
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
func (r *Runtime) emitAudit(ctx context.Context, h *Host, rec auditRecord) {
	payload, err := json.Marshal(rec)
	if err != nil {
		h.log.Error().Err(err).Str("command", rec.Command).Msg("could not encode the audit record")
		return
	}
	// Bounded: a full high lane (NATS down) must not hold the command, and
	// with it shutdown, forever.
	actx, cancel := context.WithTimeout(ctx, r.opts.CommandTimeout)
	defer cancel()
	if err := h.Emit(actx, Event{
		Subject: subjects.Audit(h.kind, h.name, rec.Command), Lane: LaneHigh,
		Payload: payload, Type: "audit",
	}); err != nil {
		h.log.Error().Err(err).Str("command", rec.Command).Msg("could not record the command in the audit stream")
	}
}

// publishAudit records a command for a session this process does not serve
// (no host, no lane): published straight to JetStream, bounded by AckTimeout.
// The session token comes from a subject, so it is already one token; Token
// still caps its length.
func (r *Runtime) publishAudit(ctx context.Context, kind, session string, rec auditRecord) {
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

func (r *Runtime) host(kind, name string) *Host {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hosts[kind+"."+name]
}
