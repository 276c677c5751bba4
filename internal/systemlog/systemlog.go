// Package systemlog builds the hclog loggers of Signet's commands.
package systemlog

import (
	"io"

	"github.com/hashicorp/go-hclog"
)

// New returns a logger named name at level ("info" if unknown) writing text
// to w.
func New(name, level string, w io.Writer) hclog.Logger {
	l := hclog.LevelFromString(level)
	if l == hclog.NoLevel {
		l = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: l, Output: w})
}
