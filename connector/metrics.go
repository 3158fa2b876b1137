package connector

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	superseded *prometheus.CounterVec
	depth      *laneDepths
	commands   *prometheus.CounterVec
	malformed  *prometheus.CounterVec
	reconnects *prometheus.CounterVec
	connected  *prometheus.GaugeVec
	rtt        *prometheus.GaugeVec

	eventTypes     *prometheus.CounterVec
	publishLatency *prometheus.HistogramVec
	inflight       *prometheus.GaugeVec
	commandLatency *prometheus.HistogramVec
	publishErrors  *prometheus.CounterVec
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
			Name: "connector_lane_dropped_total", Help: "Low-lane events dropped: the oldest when the lane was full, or lost in flight when a publish failed (never retried).",
		}, session),
		superseded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_lane_superseded_total", Help: "Low-lane events replaced, while the lane was full, by a newer one of the same subject (CONNECTOR_LOW_LANE_SHED=latest): never published, no Connector-Seq gap.",
		}, session),
		depth: &laneDepths{
			desc:  prometheus.NewDesc("connector_lane_depth", "Events queued in a lane, waiting to be published (read from the queue at scrape time).", lane, nil),
			byKey: map[[3]string]*laneDepth{},
		},
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_commands_total", Help: "Commands received, by outcome (ok or the refusal code).",
		}, []string{"source", "session", "command", "outcome"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_malformed_total", Help: "Upstream frames that were not valid JSON objects.",
		}, session),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_upstream_reconnects_total", Help: "Upstream reconnections, by the reason the previous connection ended.",
		}, []string{"source", "session", "reason"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_upstream_connected", Help: "1 while the upstream session is established.",
		}, session),
		rtt: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_upstream_rtt_seconds", Help: "Last application-level round-trip time to the upstream.",
		}, session),
		eventTypes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_events_by_type_total", Help: "Upstream events accepted into a lane, by upstream message type (at most MaxEventTypes per session; the rest count as \"other\").",
		}, []string{"source", "session", "type"}),
		publishLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "connector_publish_latency_seconds",
			Help:    "From reading an event upstream to its JetStream ack.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, lane),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_publish_inflight", Help: "JetStream publishes sent and not yet acknowledged.",
		}, []string{"lane"}),
		commandLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "connector_command_duration_seconds",
			Help:    "Time to handle one command, from receipt to reply (refusals included).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"source", "session", "command"}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_publish_errors_total",
			Help: "Failed publish attempts by reason (no_responders, stream_missing, timeout, disconnected, stream_full, too_large, wrong_last_sequence, other); publish_errors.go says how each is handled.",
		}, []string{"source", "session", "lane", "reason"}),
	}
	reg.MustRegister(m.events, m.published, m.retries, m.failed, m.dropped, m.superseded, m.depth,
		m.commands, m.malformed, m.reconnects, m.connected, m.rtt,
		m.eventTypes, m.publishLatency, m.inflight, m.commandLatency, m.publishErrors)
	return m
}

type laneMetrics struct {
	events, published, retries, failed prometheus.Counter
	depth                              *laneDepth
	// latency observes Event.Received to JetStream ack, once per stored event.
	latency prometheus.Observer
	// inflight is shared by every session of the lane (label lane only).
	inflight prometheus.Gauge
	// errors counts failed publish attempts by reason (publishErrorReason).
	errors *prometheus.CounterVec
	// dropped is the session's connector_lane_dropped_total: the low lane
	// also counts there the events lost in flight (pump.go).
	dropped prometheus.Counter
}

func (m *Metrics) lane(kind, name string, l Lane) laneMetrics {
	lv := []string{kind, name, l.String()}
	return laneMetrics{
		events:    m.events.WithLabelValues(lv...),
		published: m.published.WithLabelValues(lv...),
		retries:   m.retries.WithLabelValues(lv...),
		failed:    m.failed.WithLabelValues(lv...),
		depth:     m.depth.lane(lv),
		latency:   m.publishLatency.WithLabelValues(lv...),
		inflight:  m.inflight.WithLabelValues(l.String()),
		errors:    m.publishErrors.MustCurryWith(prometheus.Labels{"source": kind, "session": name, "lane": l.String()}),
		dropped:   m.dropped.WithLabelValues(kind, name),
	}
}

// laneDepths is connector_lane_depth: each series reads its queue's length
// when scraped, so the gauge is exact and costs nothing per event.
type laneDepths struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	byKey map[[3]string]*laneDepth
}

func (d *laneDepths) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

func (d *laneDepths) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.byKey {
		ch <- l
	}
}

// lane returns the series of one lane, the same one for the same labels.
func (d *laneDepths) lane(labels []string) *laneDepth {
	key := [3]string{labels[0], labels[1], labels[2]}
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.byKey[key]; l != nil {
		return l
	}
	l := &laneDepth{desc: d.desc, labels: key}
	d.byKey[key] = l
	return l
}

// laneDepth is one lane's depth series (a prometheus.Metric).
type laneDepth struct {
	desc   *prometheus.Desc
	labels [3]string
	queue  atomic.Pointer[func() int]
}

// track makes the series report depth(), the length of the lane's queue.
func (l *laneDepth) track(depth func() int) { l.queue.Store(&depth) }

func (l *laneDepth) value() float64 {
	if f := l.queue.Load(); f != nil {
		return float64((*f)())
	}
	return 0
}

func (l *laneDepth) Desc() *prometheus.Desc { return l.desc }

func (l *laneDepth) Write(out *dto.Metric) error {
	m, err := prometheus.NewConstMetric(l.desc, prometheus.GaugeValue, l.value(), l.labels[:]...)
	if err != nil {
		return err
	}
	return m.Write(out)
}

// SessionMetrics are the series a source updates itself.
type SessionMetrics struct {
	// Malformed counts upstream frames published to the malformed subject.
	Malformed prometheus.Counter
	// Reconnects counts reconnections by the reason the previous connection
	// ended: use a small fixed set of reason codes (label cardinality).
	Reconnects *prometheus.CounterVec
	// Connected is 1 while the upstream session is established.
	Connected prometheus.Gauge
	// RTT is the last application-level round trip, in seconds.
	RTT prometheus.Gauge
}

func (m *Metrics) session(kind, name string) SessionMetrics {
	return SessionMetrics{
		Malformed:  m.malformed.WithLabelValues(kind, name),
		Reconnects: m.reconnects.MustCurryWith(prometheus.Labels{"source": kind, "session": name}),
		Connected:  m.connected.WithLabelValues(kind, name),
		RTT:        m.rtt.WithLabelValues(kind, name),
	}
}
