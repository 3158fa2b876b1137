package connector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the connector's Prometheus series. They are registered on the
// registry given to NewMetrics (never the global one), so tests and several
// runtimes in one process do not collide.
type Metrics struct {
	events     *prometheus.CounterVec
	published  *prometheus.CounterVec
	retries    *prometheus.CounterVec
	failed     *prometheus.CounterVec
	dropped    *prometheus.CounterVec
	depth      *prometheus.GaugeVec
	commands   *prometheus.CounterVec
	malformed  *prometheus.CounterVec
	reconnects *prometheus.CounterVec
	connected  *prometheus.GaugeVec
	rtt        *prometheus.GaugeVec
}

// NewMetrics creates the series and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	session := []string{"source", "session"}
	lane := []string{"source", "session", "lane"}
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_events_total", Help: "Upstream events accepted into a lane.",
		}, lane),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_published_total", Help: "Events stored in JetStream (acknowledged).",
		}, lane),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_publish_retries_total", Help: "Publishes retried after a failed or timed-out ack.",
		}, lane),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_publish_failed_total", Help: "Events JetStream refused permanently or that were unacknowledged at shutdown.",
		}, lane),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_lane_dropped_total", Help: "Low-lane events dropped (oldest first) because the lane was full.",
		}, session),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_lane_depth", Help: "Events queued in a lane, waiting to be published.",
		}, lane),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_commands_total", Help: "Commands received, by outcome (ok or the refusal code).",
		}, []string{"source", "session", "command", "outcome"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_malformed_total", Help: "Upstream frames that were not valid JSON objects.",
		}, session),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_upstream_reconnects_total", Help: "Upstream connection attempts after the first.",
		}, session),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_upstream_connected", Help: "1 while the upstream session is established.",
		}, session),
		rtt: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_upstream_rtt_seconds", Help: "Last application-level round-trip time to the upstream.",
		}, session),
	}
	reg.MustRegister(m.events, m.published, m.retries, m.failed, m.dropped, m.depth,
		m.commands, m.malformed, m.reconnects, m.connected, m.rtt)
	return m
}

type laneMetrics struct {
	events, published, retries, failed prometheus.Counter
	depth                              prometheus.Gauge
}

func (m *Metrics) lane(kind, name string, l Lane) laneMetrics {
	lv := []string{kind, name, l.String()}
	return laneMetrics{
		events:    m.events.WithLabelValues(lv...),
		published: m.published.WithLabelValues(lv...),
		retries:   m.retries.WithLabelValues(lv...),
		failed:    m.failed.WithLabelValues(lv...),
		depth:     m.depth.WithLabelValues(lv...),
	}
}

// SessionMetrics are the series a source updates itself.
type SessionMetrics struct {
	// Malformed counts upstream frames published to the malformed subject.
	Malformed prometheus.Counter
	// Reconnects counts connection attempts after the first.
	Reconnects prometheus.Counter
	// Connected is 1 while the upstream session is established.
	Connected prometheus.Gauge
	// RTT is the last application-level round trip, in seconds.
	RTT prometheus.Gauge
}

func (m *Metrics) session(kind, name string) SessionMetrics {
	return SessionMetrics{
		Malformed:  m.malformed.WithLabelValues(kind, name),
		Reconnects: m.reconnects.WithLabelValues(kind, name),
		Connected:  m.connected.WithLabelValues(kind, name),
		RTT:        m.rtt.WithLabelValues(kind, name),
	}
}
