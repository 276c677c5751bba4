package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	s := String("signet")
	if !strings.HasPrefix(s, "signet ") || !strings.Contains(s, "commit ") || !strings.Contains(s, runtime.Version()) {
		t.Fatalf("String = %q", s)
	}
}
