package connector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// FleetMetrics are a fleet replica's lease series, registered on the
// registry given to NewFleetMetrics.
type FleetMetrics struct {
	held         *prometheus.GaugeVec
	acquisitions *prometheus.CounterVec
	losses       *prometheus.CounterVec
	handover     prometheus.Histogram
	fenced       prometheus.Counter
}

// NewFleetMetrics creates the series and registers them on reg.
func NewFleetMetrics(reg prometheus.Registerer) *FleetMetrics {
	session := []string{"source", "session"}
	m := &FleetMetrics{
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "connector_lease_held", Help: "1 while this replica holds the session's lease in CONNECTOR_LEASES (and runs the session), else 0.",
		}, session),
		acquisitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_lease_acquisitions_total", Help: "Leases this replica took: acquired (the key was free) or adopted (held under this replica's name by an earlier process).",
		}, append(session, "how")),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connector_lease_losses_total", Help: "Sessions stopped at once because their lease was lost (taken or expired) or could not be confirmed in time (self-fencing).",
		}, append(session, "reason")),
		handover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "connector_lease_handover_seconds",
			Help:    "Graceful handovers: from the start of a session's stop to the release of its lease.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.fenced = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "connector_lease_fenced_total", Help: "Upstream writes and commands refused because this replica could not confirm its lease in time (not_owner).",
	})
	reg.MustRegister(m.held, m.acquisitions, m.losses, m.handover, m.fenced)
	return m
}
