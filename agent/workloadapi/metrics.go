package workloadapi

import "github.com/prometheus/client_golang/prometheus"

// Metrics count Workload API answers.
type Metrics struct {
	answers *prometheus.CounterVec
}

// NewMetrics registers the Workload API metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{answers: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_agent_workload_api_answers_total", Help: "Workload API answers, by call and result.",
	}, []string{"call", "result"})}
	reg.MustRegister(m.answers)
	return m
}

func (m *Metrics) answer(event, result string) {
	if m != nil {
		m.answers.WithLabelValues(event, result).Inc()
	}
}
