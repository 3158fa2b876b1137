package lasersell

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/jetbridge/connector/connector"
)

// position is one open position as kept in the positions bucket (key: the
// position id). It is what the SDKs' StreamSession keeps in memory, made
// durable so that the deadline survives restarts.
type position struct {
	PositionID   uint64 `json:"position_id"`
	WalletPubkey string `json:"wallet_pubkey"`
	Mint         string `json:"mint"`
	TokenAccount string `json:"token_account,omitempty"`
	// OpenedAtMS is the upstream's opened_at_ms when given, else when the
	// connector first saw the position; re-emissions never move it later.
	// Stored in KV, it is what makes the deadline survive restarts.
	OpenedAtMS int64 `json:"opened_at_ms"`
	// OpenedAtSource is "upstream" or "received".
	OpenedAtSource  string `json:"opened_at_source"`
	UpstreamSession string `json:"upstream_session,omitempty"`
	// Strategy is a per-position override (update_position_strategy), re-sent
	// when the position is re-announced on a new connection.
	Strategy *Strategy `json:"strategy_override,omitempty"`
	// DeadlineRequestedAtMS is when the automatic request_exit_signal was
	// sent; a position gets at most one.
	DeadlineRequestedAtMS int64 `json:"deadline_requested_at_ms,omitempty"`
}

// positionOpened records (or refreshes) an open position and, when the
// operator overrode its strategy, re-sends the override on this connection.
func (s *Source) positionOpened(c *conn, r *route, now time.Time) {
	id, err := strconv.ParseUint(r.PositionID, 10, 64)
	if err != nil {
		s.log.Warn().Str("position_id", r.PositionID).Msg("position_opened without a numeric position_id: not tracked")
		return
	}
	openedMS, fromUpstream := int64(0), false
	if v, err := strconv.ParseInt(r.OpenedAtMS, 10, 64); err == nil && v > 0 {
		openedMS, fromUpstream = v, true
	}

	s.mu.Lock()
	old := s.positions[id]
	p := &position{}
	if old != nil {
		*p = *old
	}
	p.PositionID, p.WalletPubkey, p.Mint = id, r.WalletPubkey, r.Mint
	if r.TokenAccount != "" {
		p.TokenAccount = r.TokenAccount
	}
	// A re-emission never moves the open time later: the deadline counts from
	// the original opening. An upstream time earlier than the one we hold
	// (we first saw the position without opened_at_ms) is the better truth.
	switch {
	case old == nil && fromUpstream:
		p.OpenedAtMS, p.OpenedAtSource = openedMS, "upstream"
	case old == nil:
		p.OpenedAtMS, p.OpenedAtSource = now.UnixMilli(), "received"
	case fromUpstream && openedMS < old.OpenedAtMS:
		p.OpenedAtMS, p.OpenedAtSource = openedMS, "upstream"
	}
	if c.sessionID != "" {
		p.UpstreamSession = c.sessionID
	}
	changed := old == nil || !samePosition(old, p)
	s.positions[id] = p
	_, seen := c.announced[id]
	c.announced[id] = struct{}{}
	var resend []byte
	if p.Strategy != nil && s.conn == c && !c.overrides[id] {
		resend, _ = json.Marshal(updatePositionStrategyFrame{Type: typeUpdatePositionStrategy, PositionID: id, Strategy: *p.Strategy})
		if c.enqueueLocked(outFrame{data: resend}) {
			c.overrides[id] = true
		}
	}
	s.mu.Unlock()

	if resend != nil {
		s.log.Info().Uint64("position_id", id).Msg("per-position strategy re-sent for the re-announced position")
	}
	if changed {
		s.persistPosition(id)
	}
	if changed || !seen {
		// Re-announced: confirmed open, its deadline may fire now.
		s.wakeDeadlines()
	}
}

// samePosition compares the persisted fields (the override pointer aside).
func samePosition(a, b *position) bool {
	x, y := *a, *b
	x.Strategy, y.Strategy = nil, nil
	return x == y && sameJSON(a.Strategy, b.Strategy)
}

// positionClosed forgets a position.
func (s *Source) positionClosed(r *route) {
	id, err := strconv.ParseUint(r.PositionID, 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	_, known := s.positions[id]
	delete(s.positions, id)
	s.mu.Unlock()
	if known {
		s.persistPosition(id)
	}
}

// armSettleLocked starts the settle window of the reconciliation once the
// connection is established (hello_ok) and its configure written, in either
// order. s.mu must be held.
func (c *conn) armSettleLocked() {
	if c.ready && c.configured && !c.settling {
		c.settling = true
		close(c.settle)
	}
}

// reconcileLoop runs the reconciliation of one connection: after the settle
// window, one ping round trip, then reconcile. It ends with the connection.
func (s *Source) reconcileLoop(ctx context.Context, c *conn) {
	select {
	case <-ctx.Done():
		return
	case <-c.settle:
	}
	t := time.NewTimer(s.cfg.ReconcileAfter)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	// The server answers in order, so the pong comes after every
	// re-announcement it queued before reading our ping, and the reader
	// handles frames in order: once the pong is in, every re-announcement
	// sent so far has been recorded, however long the reader waited on a
	// full lane.
	reply := make(chan time.Duration, 1)
	f := pingOut(reply)
	select {
	case c.out <- f:
	case <-ctx.Done():
		return
	}
	select {
	case <-reply:
	case <-ctx.Done():
		return
	}
	s.reconcile(c)
}

// reconcile removes the positions the server did not re-announce on c: after
// hello_ok and configure the server re-emits position_opened for every open
// position of the configured wallets, so a position of a configured wallet
// that was not re-announced was closed while the connector was disconnected
// or stopped (its position_closed was never received). Positions of wallets
// outside the current configure are left alone. Until c is reconciled, only
// positions announced on c can fire their deadline.
//
// When the server sent an error frame since the configure was written, the
// configure may have been refused (then nothing is re-announced): the
// reconciliation is skipped, and the next connection tries again.
func (s *Source) reconcile(c *conn) {
	s.mu.Lock()
	if s.conn != c || !c.ready || c.reconciled {
		s.mu.Unlock()
		return
	}
	if c.upErrors > 0 {
		n := c.upErrors
		s.reconcileSkips++
		s.mu.Unlock()
		s.log.Warn().Int("upstream_errors", n).
			Msg("position reconciliation skipped: the server sent errors after the configure (it may have been refused); unconfirmed positions wait for the next connection")
		return
	}
	configured := map[string]bool{}
	if s.desired != nil {
		for _, w := range s.desired.WalletPubkeys {
			configured[w] = true
		}
	}
	var stale []position
	for id, p := range s.positions {
		if _, ok := c.announced[id]; ok || !configured[p.WalletPubkey] {
			continue
		}
		stale = append(stale, *p)
		delete(s.positions, id)
		s.dirty[id] = struct{}{}
	}
	c.reconciled = true
	s.reconciledTotal += uint64(len(stale))
	total := s.reconciledTotal
	kept := len(s.positions)
	s.mu.Unlock()

	for _, p := range stale {
		s.log.Warn().Uint64("position_id", p.PositionID).Str("wallet", p.WalletPubkey).Str("mint", p.Mint).
			Int64("opened_at_ms", p.OpenedAtMS).
			Msg("position not re-announced by the server: it closed while the connector was disconnected or stopped; removed")
	}
	s.log.Info().Int("removed", len(stale)).Int("open", kept).Uint64("removed_total", total).
		Msg("open positions reconciled with the server")
	if len(stale) > 0 {
		s.wakePersist()
	}
	s.wakeDeadlines() // unconfirmed positions that survived may fire now
}

// Reconciled returns how many positions reconciliation has removed, and how
// many reconciliations were skipped, since the source was built.
func (s *Source) Reconciled() (removed, skipped uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconciledTotal, s.reconcileSkips
}

// dropWalletsLocked forgets the positions of the wallets that are in cur
// but not in next (update_wallets, configure): the server no longer reports
// on them. It returns their ids, to persist. s.mu must be held.
func (s *Source) dropWalletsLocked(cur, next *Configure) []uint64 {
	if cur == nil || next == nil {
		return nil
	}
	kept := make(map[string]bool, len(next.WalletPubkeys))
	for _, w := range next.WalletPubkeys {
		kept[w] = true
	}
	removed := map[string]bool{}
	for _, w := range cur.WalletPubkeys {
		if !kept[w] {
			removed[w] = true
		}
	}
	if len(removed) == 0 {
		return nil
	}
	var ids []uint64
	for id, p := range s.positions {
		if removed[p.WalletPubkey] {
			ids = append(ids, id)
			delete(s.positions, id)
			s.dirty[id] = struct{}{}
		}
	}
	return ids
}

// persistPosition schedules the in-memory state of one position for KV. The
// reader never waits on KV: the persist loop writes in the background,
// coalescing repeated changes of a position into one write.
func (s *Source) persistPosition(id uint64) {
	s.mu.Lock()
	s.dirty[id] = struct{}{}
	s.mu.Unlock()
	s.wakePersist()
}

// wakePersist nudges the persist loop.
func (s *Source) wakePersist() {
	select {
	case s.persistWake <- struct{}{}:
	default:
	}
}

// persistRetry is the pause before retrying failed position writes.
const persistRetry = time.Second

// persistLoop owns the writes of the positions bucket. Each write reads the
// latest in-memory state, so KV always converges on memory whatever the
// order of changes. At shutdown it flushes what is pending.
func (s *Source) persistLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			s.flushPositions(fctx)
			cancel()
			return
		case <-s.persistWake:
		case <-retry.C:
		}
		if !s.flushPositions(ctx) {
			retry.Reset(persistRetry)
		}
	}
}

// flushPositions writes every dirty position; false when some failed (they
// stay dirty).
func (s *Source) flushPositions(ctx context.Context) bool {
	s.mu.Lock()
	ids := make([]uint64, 0, len(s.dirty))
	for id := range s.dirty {
		ids = append(ids, id)
	}
	clear(s.dirty)
	s.mu.Unlock()
	ok := true
	for _, id := range ids {
		s.mu.Lock()
		var val []byte
		if p := s.positions[id]; p != nil {
			val, _ = json.Marshal(p)
		}
		s.mu.Unlock()
		key := strconv.FormatUint(id, 10)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		if val == nil {
			err = s.positionsKV.Delete(wctx, key)
		} else {
			err = s.positionsKV.Put(wctx, key, val)
		}
		cancel()
		if err != nil {
			ok = false
			s.mu.Lock()
			s.dirty[id] = struct{}{}
			s.mu.Unlock()
			if ctx.Err() == nil {
				s.log.Error().Err(err).Uint64("position_id", id).Msg("could not record the position in KV; will retry")
			}
		}
	}
	return ok
}

// deadlineLoop owns the deadline timer: with deadline_timeout_sec > 0, a
// position open that long gets one automatic request_exit_signal. Deadlines
// come from stored open times, so they survive restarts; a deadline that
// passes while disconnected fires after the next hello_ok.
func (s *Source) deadlineLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		next := s.fireDueDeadlines(ctx)
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// fireDueDeadlines requests exits for the positions past their deadline (when
// connected) and returns the next deadline (zero: none).
func (s *Source) fireDueDeadlines(ctx context.Context) time.Time {
	now := time.Now()
	var due []uint64
	var next time.Time
	s.mu.Lock()
	var deadline time.Duration
	if s.desired != nil {
		deadline = time.Duration(s.desired.DeadlineTimeoutSec) * time.Second
	}
	c := s.conn
	connected := c != nil && c.ready
	if deadline > 0 {
		for id, p := range s.positions {
			if p.DeadlineRequestedAtMS != 0 {
				continue
			}
			at := time.UnixMilli(p.OpenedAtMS).Add(deadline)
			if at.After(now) {
				if next.IsZero() || at.Before(next) {
					next = at
				}
				continue
			}
			// A position known only from before this connection may have
			// closed meanwhile: it waits for its re-announcement or the
			// reconciliation (both wake this loop).
			if !connected {
				continue
			}
			if _, announced := c.announced[id]; announced || c.reconciled {
				due = append(due, id)
			}
		}
	}
	s.mu.Unlock()
	if !connected {
		return next // due ones wait for the next hello_ok, which wakes this loop
	}
	for _, id := range due {
		if ctx.Err() != nil {
			return time.Time{}
		}
		s.requestDeadlineExit(ctx, id, deadline)
	}
	return next
}

// requestDeadlineExit sends the automatic request_exit_signal for a position,
// records it on the position and in the audit stream.
func (s *Source) requestDeadlineExit(ctx context.Context, id uint64, deadline time.Duration) {
	issued := time.Now()
	pid := id
	data, _ := json.Marshal(selectorFrame{Type: typeRequestExitSignal, PositionID: &pid})
	done := make(chan error, 1)
	s.mu.Lock()
	c := s.conn
	if c == nil || !c.ready || s.positions[id] == nil {
		s.mu.Unlock()
		return
	}
	if !c.enqueueLocked(outFrame{data: data, done: done}) {
		s.mu.Unlock()
		s.log.Warn().Uint64("position_id", id).Msg("deadline exit request postponed: the upstream write queue is full")
		return
	}
	s.mu.Unlock()

	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return
	}
	if err != nil {
		// Not marked: the next hello_ok retries it.
		s.log.Warn().Err(err).Uint64("position_id", id).Msg("deadline exit request not sent; will retry after reconnecting")
		return
	}
	sentAt := time.Now()
	s.mu.Lock()
	if p := s.positions[id]; p != nil {
		updated := *p // replaced, never mutated: a reply may be encoding the old one
		updated.DeadlineRequestedAtMS = sentAt.UnixMilli()
		s.positions[id] = &updated
	}
	s.mu.Unlock()
	s.persistPosition(id)
	s.log.Info().Uint64("position_id", id).Dur("deadline_ms", deadline).Msg("deadline reached: request_exit_signal sent")
	// Audited next to the operators' commands: the stream accounts for
	// everything asked of the upstream.
	if err := s.host.Audit(ctx, deadlineAudit(id, issued, sentAt, data)); err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Uint64("position_id", id).Msg("could not record the deadline exit request in the audit stream")
	}
}

// deadlineAudit is the audit record of a deadline's request_exit_signal, in
// the shape of an operator's: the request an operator would have sent for
// the position, the reply it would have got once the frame was written.
func deadlineAudit(id uint64, issued, sent time.Time, frame []byte) connector.AuditRecord {
	// A number and a fixed key: the encoding cannot fail.
	request, _ := json.Marshal(struct {
		PositionID uint64 `json:"position_id"`
	}{id})
	return connector.AuditRecord{
		Command:    typeRequestExitSignal,
		Origin:     "deadline",
		Received:   issued,
		DurationMS: float64(sent.Sub(issued).Microseconds()) / 1000,
		Request:    request,
		Reply:      connector.Reply(sentReply{Sent: frame}, nil),
	}
}
