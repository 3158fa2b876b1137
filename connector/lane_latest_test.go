package connector

import (
	"bytes"
	"strconv"
	"testing"
)

// modelItem is an event as the reference model of a low lane keeps it.
type modelItem struct {
	subject, payload string
	seq              uint64
}

// modelLane is the plainest low lane: a slice, searched from the newest.
type modelLane struct {
	items      []modelItem
	capacity   int
	keepLatest bool
	seq        uint64
	dropped    int
	superseded int
}

func (m *modelLane) put(subject, payload string) {
	if len(m.items) == m.capacity {
		if m.keepLatest {
			for i := len(m.items) - 1; i >= 0; i-- {
				if m.items[i].subject == subject {
					m.items[i].payload = payload
					m.superseded++
					return
				}
			}
		}
		victim := 0 // the oldest superseded one within latestScan, else the oldest
	scan:
		for i := range min(len(m.items), latestScan) {
			if !m.keepLatest {
				break
			}
			for _, later := range m.items[i+1:] {
				if later.subject == m.items[i].subject {
					victim = i
					break scan
				}
			}
		}
		m.items = append(m.items[:victim:victim], m.items[victim+1:]...)
		m.dropped++
	}
	m.seq++
	m.items = append(m.items, modelItem{subject: subject, payload: payload, seq: m.seq})
}

func (m *modelLane) poll(n int) []modelItem {
	n = min(n, len(m.items))
	out := m.items[:n:n]
	m.items = m.items[n:]
	return out
}

// checkLaneAgainstModel plays ops on a lowQueue and on the model (the rules
// of lane_latest.go, written the obvious way): each byte below 0xC0 puts an
// event of one of the given number of subjects, each other byte polls up to
// a few events, which must be the model's, in order, with the model's
// Connector-Seq; the drop and supersession counts must be the model's too.
func checkLaneAgainstModel(t *testing.T, capacity, subjects int, keepLatest bool, ops []byte) {
	t.Helper()
	var dropped, superseded int
	var onSupersede func()
	if keepLatest {
		onSupersede = func() { superseded++ }
	}
	q := newLowQueue(capacity, func() { dropped++ }, onSupersede, make(chan struct{}, 1))
	m := &modelLane{capacity: capacity, keepLatest: keepLatest}
	var buf []queued
	for k, op := range ops {
		if op < 0xC0 {
			subject := "s." + strconv.Itoa(int(op)%subjects)
			payload := strconv.Itoa(k)
			q.put(queued{Event: Event{Subject: subject, Payload: []byte(payload)}})
			m.put(subject, payload)
			continue
		}
		n := int(op-0xC0)%7 + 1
		buf = q.poll(buf[:0], n)
		want := m.poll(n)
		if len(buf) != len(want) {
			t.Fatalf("op %d: polled %d, model %d", k, len(buf), len(want))
		}
		for i := range want {
			got := buf[i]
			if got.Subject != want[i].subject || string(got.Payload) != want[i].payload || got.seq != want[i].seq {
				t.Fatalf("op %d: polled %s %s seq %d, model %s %s seq %d", k,
					got.Subject, got.Payload, got.seq, want[i].subject, want[i].payload, want[i].seq)
			}
		}
		if len(q.items) > capacity {
			t.Fatalf("op %d: the ring grew to %d slots, beyond its capacity %d", k, len(q.items), capacity)
		}
		if keepLatest && q.n <= capacity/2 && q.latest != nil {
			t.Fatalf("op %d: the subject index outlived the pressure (%d of %d queued)", k, q.n, capacity)
		}
	}
	if dropped != m.dropped || superseded != m.superseded {
		t.Fatalf("dropped %d, superseded %d; model %d, %d", dropped, superseded, m.dropped, m.superseded)
	}
	if q.depth() != len(m.items) {
		t.Fatalf("depth %d, model %d", q.depth(), len(m.items))
	}
}

// TestLowQueueKeepsTheLatestPerSubject: a full lane that keeps the latest
// replaces the queued update of the new one's subject in its place, under
// its Connector-Seq; for a subject with nothing queued it drops the oldest
// update that a newer one of its subject supersedes, never a subject's only
// one while there is such an update.
func TestLowQueueKeepsTheLatestPerSubject(t *testing.T) {
	var dropped, superseded int
	q := newLowQueue(4, func() { dropped++ }, func() { superseded++ }, make(chan struct{}, 1))
	put := func(subject, payload string) {
		q.put(queued{Event: Event{Subject: subject, Payload: []byte(payload)}})
	}
	put("a", "a1")
	put("b", "b1")
	put("a", "a2")
	put("b", "b2") // full: a1 b1 a2 b2
	put("a", "a3") // replaces a2 (the newest a), in its place
	put("c", "c1") // no c queued: the oldest (a1) goes
	got := q.poll(nil, 10)
	want := []struct {
		payload string
		seq     uint64
	}{{"b1", 2}, {"a3", 3}, {"b2", 4}, {"c1", 5}}
	if len(got) != len(want) {
		t.Fatalf("polled %d events, want %d", len(got), len(want))
	}
	for i, w := range want {
		if string(got[i].Payload) != w.payload || got[i].seq != w.seq {
			t.Fatalf("event %d: %s seq %d, want %s seq %d", i, got[i].Payload, got[i].seq, w.payload, w.seq)
		}
	}
	if superseded != 1 || dropped != 1 {
		t.Fatalf("superseded %d, dropped %d; want 1 and 1", superseded, dropped)
	}
	if q.latest != nil {
		t.Fatal("the subject index outlived the pressure")
	}
	// A subject's only queued update is kept: the oldest superseded one goes.
	put("x", "x1")
	put("a", "a4")
	put("a", "a5")
	put("y", "y1") // full: x1 a4 a5 y1
	put("z", "z1") // x1 is x's latest: a4 goes, x1 moves up
	got = q.poll(nil, 10)
	want = []struct {
		payload string
		seq     uint64
	}{{"x1", 6}, {"a5", 8}, {"y1", 9}, {"z1", 10}}
	for i, w := range want {
		if i >= len(got) || string(got[i].Payload) != w.payload || got[i].seq != w.seq {
			t.Fatalf("second round, event %d: got %d events (%v), want %s seq %d", i, len(got), got, w.payload, w.seq)
		}
	}
	if superseded != 1 || dropped != 2 {
		t.Fatalf("superseded %d, dropped %d; want 1 and 2", superseded, dropped)
	}
	// Without onSupersede the same puts drop the oldest, as before.
	checkLaneAgainstModel(t, 4, 5, false, []byte{0, 1, 0, 1, 0, 2, 0xC9})
	checkLaneAgainstModel(t, 4, 5, true, []byte{0, 1, 0, 1, 0, 2, 0xC9})
}

// FuzzLowQueueAgainstModel: any sequence of puts and polls gives what the
// reference model gives, in both shedding modes, through the ring's growth
// (it starts at lowQueueFirstSlots), with more subjects than slots or fewer
// (so that drops shift events across the wrap of a grown ring) and lanes
// longer than the search for a superseded event (latestScan).
func FuzzLowQueueAgainstModel(f *testing.F) {
	f.Add(uint8(3), uint8(4), true, []byte{0, 1, 2, 0, 1, 2, 3, 0xC1, 4, 4, 4, 0xC6, 0, 0xFF})
	f.Add(uint8(1), uint8(4), true, []byte{0, 0, 1, 0xC0, 1, 1})
	f.Add(uint8(8), uint8(4), false, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xC3, 0xC3, 0xC3})
	// Growth with the ring wrapped: 16 slots, head moved, then a backlog.
	f.Add(uint8(40), uint8(4), true, append(append(bytes.Repeat([]byte{1}, 12), 0xC6, 0xC6), bytes.Repeat([]byte{0, 1, 2, 3, 4, 5, 6}, 9)...))
	// A lane of 100 with 80 quiet subjects and a busy one: drops beyond latestScan.
	busy := make([]byte, 0, 400)
	for i := range 200 {
		busy = append(busy, byte(i%80), 80)
	}
	f.Add(uint8(99), uint8(80), true, busy)
	f.Fuzz(func(t *testing.T, capacity, subjects uint8, keepLatest bool, ops []byte) {
		// The model scans its queue per put: keep each run short, so the
		// fuzzing time goes to many sequences rather than a few huge ones.
		ops = ops[:min(len(ops), 1024)]
		checkLaneAgainstModel(t, int(capacity%200)+1, int(subjects%97)+1, keepLatest, ops)
	})
}
