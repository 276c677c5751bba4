// Package systemlog builds the hclog loggers of Signet's commands.
package systemlog

import (
	"fmt"
	"io"

	"github.com/hashicorp/go-hclog"
)

// New returns a logger named name at level writing to w, as JSON if asked.
func New(name, level string, json bool, w io.Writer) (hclog.Logger, error) {
	l := hclog.LevelFromString(level)
	if l == hclog.NoLevel {
		return nil, fmt.Errorf("log-level: %q: want trace, debug, info, warn or error", level)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: l, JSONFormat: json, Output: w}), nil
}
