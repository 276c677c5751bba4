package audit

import (
	"fmt"
	"strings"
	"testing"
)

func lines(from, to int, width int) []byte {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "{\"n\":%d,\"pad\":%q}\n", i, strings.Repeat("x", width))
	}
	return []byte(b.String())
}

func numbers(b Batch) []string {
	var out []string
	for _, l := range b.Lines {
		out = append(out, strings.SplitN(strings.TrimPrefix(string(l), `{"n":`), ",", 2)[0])
	}
	return out
}

// TestSpool: lines come back in order across segments; what was taken
// but not committed comes back after a reopen (at least once); what was
// committed does not; the bound drops the oldest and counts it.
func TestSpool(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	// 3,000 lines of ~1 KiB: three segments.
	for i := 0; i < 3; i++ {
		if err := s.Append(lines(i*1000+1, i*1000+1000, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := s.Next(500, 1<<30)
	if err != nil || len(b.Lines) != 500 || numbers(b)[0] != "1" || numbers(b)[499] != "500" {
		t.Fatalf("first batch: %d lines %v, %v", len(b.Lines), numbers(b)[:1], err)
	}
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	b, _ = s.Next(500, 1<<30)
	if numbers(b)[0] != "501" {
		t.Fatalf("second batch starts at %s", numbers(b)[0])
	}
	// Not committed: a restart gives it again.
	s.Close()
	s, err = OpenSpool(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	first := ""
	for {
		b, err := s.Next(700, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Lines) == 0 {
			break
		}
		if first == "" {
			first = numbers(b)[0]
		}
		for i, n := range numbers(b) {
			if want := fmt.Sprint(501 + got + i); n != want {
				t.Fatalf("line %s where %s was due", n, want)
			}
		}
		got += len(b.Lines)
		if err := s.Commit(b); err != nil {
			t.Fatal(err)
		}
	}
	if first != "501" || got != 2500 || s.Pending() != 0 {
		t.Fatalf("after the reopen: from %s, %d lines, %d bytes pending", first, got, s.Pending())
	}
	// The bound: 3 MiB of undelivered lines into a 2 MiB spool. The first
	// two appends share a segment (a segment takes lines until it holds
	// 1 MiB), which goes whole.
	small, err := OpenSpool(t.TempDir(), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		small.Append(lines(i*1000+1, i*1000+1000, 1000))
	}
	b, _ = small.Next(1, 1<<30)
	if small.Dropped() != 2000 || numbers(b)[0] != "2001" {
		t.Fatalf("bound: dropped %d, next is %v", small.Dropped(), numbers(b))
	}
}
