package connector

// Latest-per-subject shedding (Options.LowLaneKeepLatest,
// CONNECTOR_LOW_LANE_SHED=latest). Every low-lane event is a full snapshot
// of its subject (a position's PnL, a monitor's sample), so a full lane
// gives up what consumers miss least:
//   - an update whose subject already has one queued replaces the newest of
//     those, in its place and under its Connector-Seq: no gap, counted in
//     connector_lane_superseded_total;
//   - any other update makes room by dropping the oldest queued event that a
//     newer one of its subject supersedes (looking at most latestScan events
//     from the oldest; else the oldest): a Connector-Seq gap, counted in
//     connector_lane_dropped_total as always, but no subject loses its
//     latest state while another subject's older updates are queued.
//
// The subject index costs a map operation per put and poll, so it exists
// only under pressure: it is built when the lane first fills (one pass over
// the ring) and let go once the lane has drained to half.

// latestScan bounds the search for a superseded event to drop, so a lane of
// many quiet subjects costs at most this much per put.
const latestScan = 64

// supersedeLocked puts it in the place of the newest queued event of its
// subject and reports whether there was one. q.mu is held and q is full.
func (q *lowQueue) supersedeLocked(it queued) bool {
	if q.latest == nil {
		q.latest = make(map[string]int)
		for k := range q.n {
			i := (q.head + k) % len(q.items)
			q.latest[q.items[i].Subject] = i // newest last: it wins
		}
	}
	i, ok := q.latest[it.Subject]
	if !ok {
		return false
	}
	it.seq = q.items[i].seq
	q.items[i] = it
	return true
}

// dropSupersededLocked makes room in a full q: it drops the oldest event
// that a newer one of its subject supersedes, found within latestScan of the
// oldest, else the oldest. The events older than the dropped one move up a
// slot, in order. q.mu is held and the index exists (supersedeLocked).
func (q *lowQueue) dropSupersededLocked() {
	k := 0
	for j := range min(q.n, latestScan) {
		i := (q.head + j) % len(q.items)
		if q.latest[q.items[i].Subject] != i {
			k = j // a newer one of its subject is queued
			break
		}
	}
	q.unindexLocked((q.head + k) % len(q.items)) // the oldest when nothing is superseded
	for j := k; j > 0; j-- {
		dst, src := (q.head+j)%len(q.items), (q.head+j-1)%len(q.items)
		q.items[dst] = q.items[src]
		q.latest[q.items[dst].Subject] = dst // each was its subject's latest
	}
	q.items[q.head] = queued{}
	q.head = (q.head + 1) % len(q.items)
	q.n--
}

// indexLocked records that slot i holds the newest event of its subject.
func (q *lowQueue) indexLocked(i int) {
	if q.latest != nil {
		q.latest[q.items[i].Subject] = i
	}
}

// unindexLocked forgets slot i, which is leaving the queue.
func (q *lowQueue) unindexLocked(i int) {
	if q.latest == nil {
		return
	}
	subject := q.items[i].Subject
	if j, ok := q.latest[subject]; ok && j == i {
		delete(q.latest, subject)
	}
}

// relaxLocked lets the index go once the lane has drained to half.
func (q *lowQueue) relaxLocked() {
	if q.latest != nil && q.n <= q.capacity/2 {
		q.latest = nil
	}
}
