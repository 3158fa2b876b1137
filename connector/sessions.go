package connector

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// SessionSnapshot is one session's state and counters at one moment, for
// health and status reports. Counters are those of the Prometheus series, so
// /status and /metrics always agree.
type SessionSnapshot struct {
	Source  string `json:"source"`
	Session string `json:"session"`
	// Owner is this replica and its lease epoch, when a fleet runs the session.
	Owner
	// Connected is the source's own verdict that its upstream session is
	// established (connector_upstream_connected).
	Connected bool `json:"connected"`
	// State is the state of the last status ("" before the first one).
	State string `json:"state,omitempty"`
	// Reason is the reason of the last status, if any.
	Reason string `json:"reason,omitempty"`
	// UpstreamSession is the upstream's session id from the last status, if any.
	UpstreamSession string `json:"upstream_session,omitempty"`
	// Limits are the limits the upstream advertised with the last status
	// (Status.Limits), if any.
	Limits any `json:"limits,omitempty"`
	// LastEvent is when the last upstream event was accepted (nil: none yet).
	LastEvent *time.Time `json:"last_event,omitempty"`
	// Status is the last status document, exactly as published.
	Status    json.RawMessage       `json:"status,omitempty"`
	Lanes     map[string]LaneCounts `json:"lanes"`
	Malformed uint64                `json:"malformed"`
	// RTTSeconds is the last application-level round trip to the upstream.
	RTTSeconds float64 `json:"rtt_seconds"`
}

// LaneCounts are one lane's counters.
type LaneCounts struct {
	Events    uint64 `json:"events"`
	Published uint64 `json:"published"`
	Retries   uint64 `json:"retries"`
	Failed    uint64 `json:"failed"`
	Dropped   uint64 `json:"dropped"`
	Depth     int64  `json:"depth"`
}

// Sessions returns a snapshot of every running session, sorted by source and name.
func (r *Runtime) Sessions() []SessionSnapshot {
	r.mu.Lock()
	hosts := make([]*Host, 0, len(r.sessions))
	for _, s := range r.sessions {
		hosts = append(hosts, s.host)
	}
	r.mu.Unlock()
	slices.SortFunc(hosts, func(a, b *Host) int {
		return cmp.Or(strings.Compare(a.kind, b.kind), strings.Compare(a.name, b.name))
	})
	out := make([]SessionSnapshot, len(hosts))
	for i, h := range hosts {
		out[i] = h.Snapshot()
	}
	return out
}

// Statuses returns every running session's last status document, exactly
// as published, keyed by <kind>.<name>.
func (r *Runtime) Statuses() map[string]json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]json.RawMessage, len(r.sessions))
	for k, s := range r.sessions {
		out[k] = s.host.LastStatus()
	}
	return out
}

// Snapshot returns the session's state and counters.
func (h *Host) Snapshot() SessionSnapshot {
	s := SessionSnapshot{
		Source: h.kind, Session: h.name, Owner: h.owner,
		Connected:  metricValue(h.metrics.Connected) == 1,
		Malformed:  uint64(metricValue(h.metrics.Malformed)),
		RTTSeconds: metricValue(h.metrics.RTT),
		Lanes: map[string]LaneCounts{
			LaneHigh.String(): laneCounts(h.highM, nil),
			LaneLow.String():  laneCounts(h.lowM, h.rt.opts.Metrics.dropped.WithLabelValues(h.kind, h.name)),
		},
	}
	if ns := h.lastEvent.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		s.LastEvent = &t
	}
	if st := h.lastStatusRecord(); st != nil {
		s.Status = st.raw
		s.State, s.Reason, s.UpstreamSession, s.Limits = st.State, st.Reason, st.UpstreamSession, st.Limits
	}
	return s
}

func laneCounts(m laneMetrics, dropped prometheus.Counter) LaneCounts {
	c := LaneCounts{
		Events:    uint64(metricValue(m.events)),
		Published: uint64(metricValue(m.published)),
		Retries:   uint64(metricValue(m.retries)),
		Failed:    uint64(metricValue(m.failed)),
		Depth:     int64(metricValue(m.depth)),
	}
	if dropped != nil {
		c.Dropped = uint64(metricValue(dropped))
	}
	return c
}

// metricValue reads a counter's or gauge's current value.
func metricValue(m prometheus.Metric) float64 {
	var out dto.Metric
	if m == nil || m.Write(&out) != nil {
		return 0
	}
	switch {
	case out.Counter != nil:
		return out.Counter.GetValue()
	case out.Gauge != nil:
		return out.Gauge.GetValue()
	}
	return 0
}
