// Package version describes the running build, from the module and
// version-control information the Go toolchain records in every binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Module is the module version of the running build: "v1.2.3", or
// "(devel)" for a build from a work tree.
func Module() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(unknown)"
}

// String is what `--version` prints for program: the module version, the
// commit it was built from (with "+dirty" for uncommitted changes) and
// its time, and the Go version.
func String(program string) string {
	v, commit, at, dirty := Module(), "unknown", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.time":
				at = ", " + s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	return fmt.Sprintf("%s %s (commit %s%s%s, %s)", program, v, commit, dirty, at, runtime.Version())
}
