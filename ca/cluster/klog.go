package cluster

import (
	"github.com/go-logr/logr"
	"github.com/hashicorp/go-hclog"
	"k8s.io/klog/v2"
)

// RouteKlog sends client-go's logs (leader election, informers) to log,
// so that the CA writes one log format.
func RouteKlog(log hclog.Logger) {
	klog.SetLogger(logr.New(&klogSink{log: log}))
}

// klogSink is a logr.LogSink over hclog: klog's V(0) is Info, deeper
// levels are Debug.
type klogSink struct {
	log  hclog.Logger
	name string
	kv   []any
}

func (s *klogSink) Init(logr.RuntimeInfo)  {}
func (s *klogSink) Enabled(level int) bool { return level == 0 || s.log.IsDebug() }

func (s *klogSink) Info(level int, msg string, kv ...any) {
	args := append(append([]any(nil), s.kv...), kv...)
	if level == 0 {
		s.log.Info(msg, args...)
	} else {
		s.log.Debug(msg, args...)
	}
}

func (s *klogSink) Error(err error, msg string, kv ...any) {
	s.log.Error(msg, append(append([]any{"error", err}, s.kv...), kv...)...)
}

func (s *klogSink) WithValues(kv ...any) logr.LogSink {
	return &klogSink{log: s.log, name: s.name, kv: append(append([]any(nil), s.kv...), kv...)}
}

func (s *klogSink) WithName(name string) logr.LogSink {
	return &klogSink{log: s.log.Named(name), name: name, kv: s.kv}
}
