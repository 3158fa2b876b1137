package connector

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// Command admission defaults (Options.CommandMaxBytes, CommandRate, CommandBurst).
const (
	// DefaultCommandMaxBytes bounds one command request body. The largest
	// legitimate request known (a trading session's configure with as many
	// wallets as its limits allow, or a robot's CONTROL body) is a few KiB.
	DefaultCommandMaxBytes = 64 << 10
	// DefaultCommandRate is the sustained commands per second one session
	// accepts: twice a 500 Hz CONTROL trajectory stream.
	DefaultCommandRate = 1000
	// DefaultCommandBurst is how many commands a session accepts back to back
	// (2 s of a 500 Hz trajectory preloaded at once).
	DefaultCommandBurst = 1000
)

// Individual audit records of flood refusals (rate_limited, unknown_session):
// per session (per kind for unknown sessions) at most refusalAuditBurst at once
// and refusalAuditRate per second; the others are summed into the "suppressed"
// field of the next record, or of a summary record written refusalAuditFlush
// after the first suppression. A flood therefore cannot fill the session's
// high lane (which carries its exit signals) with audit records, and the audit
// stream still accounts for every refusal.
const (
	refusalAuditRate  = 20
	refusalAuditBurst = 100
	refusalAuditFlush = time.Second
	// maxSuppressedKeys bounds the distinct (session, command, code) sums kept
	// between summaries; beyond it, refusals are summed under manyKey.
	maxSuppressedKeys = 256
	manyKey           = "_many"
	// refusalAuditStopTimeout bounds writing the last summary at shutdown.
	refusalAuditStopTimeout = 2 * time.Second
)

// tokenBucket is a lazily refilled token bucket: no goroutine, one mutex, a
// few float operations per call. A nil bucket admits everything.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	if rate <= 0 {
		return nil
	}
	b := float64(max(burst, 1))
	return &tokenBucket{rate: rate, burst: b, tokens: b}
}

// allow takes one token if there is one.
func (b *tokenBucket) allow(now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
			b.tokens = min(b.burst, b.tokens+elapsed*b.rate)
		}
	}
	if now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// auditKey names what suppressed refusals are summed by.
type auditKey struct{ session, command, code string }

// refusalAuditor rate-limits the individual audit records of flood refusals
// and keeps count of the ones it suppresses. write emits one record.
type refusalAuditor struct {
	budget *tokenBucket
	write  func(ctx context.Context, session, command string, rec AuditRecord)

	mu         sync.Mutex
	suppressed map[auditKey]int
	timer      *time.Timer
	ctx        context.Context // for the timer's summary records
	stopped    bool
	flushing   sync.WaitGroup // timer flushes under way; stop waits for them
}

func newRefusalAuditor(ctx context.Context, write func(ctx context.Context, session, command string, rec AuditRecord)) *refusalAuditor {
	return &refusalAuditor{
		budget: newTokenBucket(refusalAuditRate, refusalAuditBurst),
		write:  write, ctx: ctx, suppressed: map[auditKey]int{},
	}
}

// record audits one flood refusal, or counts it when over the budget.
func (a *refusalAuditor) record(ctx context.Context, session, code string, rec AuditRecord, now time.Time) {
	key := auditKey{session, rec.Command, code}
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	if !a.budget.allow(now) {
		if _, seen := a.suppressed[key]; !seen && len(a.suppressed) >= maxSuppressedKeys {
			// Session and command names of unknown sessions come from the
			// requester: a flood of random names is summed under one key.
			key = auditKey{manyKey, manyKey, code}
		}
		a.suppressed[key]++
		if a.timer == nil {
			a.flushing.Add(1)
			a.timer = time.AfterFunc(refusalAuditFlush, a.flushTimer)
		}
		a.mu.Unlock()
		return
	}
	rec.Suppressed = a.suppressed[key]
	delete(a.suppressed, key)
	a.mu.Unlock()
	a.write(ctx, session, rec.Command, rec)
}

func (a *refusalAuditor) flushTimer() {
	defer a.flushing.Done()
	a.mu.Lock()
	a.timer = nil
	stopped := a.stopped
	a.mu.Unlock()
	if !stopped { // stop writes the summary itself
		a.flush(a.ctx)
	}
}

// flush writes one summary record per command and code still suppressed.
func (a *refusalAuditor) flush(ctx context.Context) {
	a.mu.Lock()
	pending := a.suppressed
	a.suppressed = map[auditKey]int{}
	a.mu.Unlock()
	now := time.Now().UTC()
	for k, n := range pending {
		reply, _ := encodeReply(nil, Refuse(k.code, "%d refusals with this code were not recorded one by one", n))
		a.write(ctx, k.session, k.command, AuditRecord{
			Command: k.command, Received: now, Request: json.RawMessage("null"), Reply: reply, Suppressed: n,
		})
	}
}

// stop cancels the timer, waits for a flush under way and writes what is
// still suppressed; later refusals are only counted in the metrics. ctx may
// have ended already (shutdown): the summary gets its own bounded time.
func (a *refusalAuditor) stop(ctx context.Context) {
	a.mu.Lock()
	a.stopped = true
	if a.timer != nil && a.timer.Stop() {
		a.flushing.Done() // the timer will not run
	}
	a.timer = nil
	a.mu.Unlock()
	a.flushing.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refusalAuditStopTimeout)
	defer cancel()
	a.flush(fctx)
}
