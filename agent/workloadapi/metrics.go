package workloadapi

import "github.com/prometheus/client_golang/prometheus"

// Metrics count Workload API answers.
type Metrics struct {
	answers *prometheus.CounterVec
	refused *prometheus.CounterVec
}

// NewMetrics registers the Workload API metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{answers: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_agent_workload_api_answers_total", Help: "Workload API answers, by call and result.",
	}, []string{"call", "result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_agent_workload_api_connections_refused_total", Help: "Workload API connections closed at once, by the limit they met.",
		}, []string{"limit"})}
	reg.MustRegister(m.answers, m.refused)
	return m
}

// ConnectionRefused counts a connection that a limit closed.
func (m *Metrics) ConnectionRefused(limit string) {
	if m != nil {
		m.refused.WithLabelValues(limit).Inc()
	}
}

func (m *Metrics) answer(event, result string) {
	if m != nil {
		m.answers.WithLabelValues(event, result).Inc()
	}
}
