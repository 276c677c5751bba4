package audit

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Unauthenticated records the refusals of callers that proved no
// identity (a failed node attestation, an agent call without a client
// certificate). Anyone who can reach the CA can make them, so they are
// recorded one by one only up to PerSource per source address per
// Interval, and counted beyond that: one RefuseAggregate record per
// source and interval says how many more there were. Records of
// authenticated callers never pass through here; they are all kept.
type Unauthenticated struct {
	Log *Log
	// PerSource records per source and interval are written in full. If
	// zero, 10.
	PerSource int
	// Interval of the counts. If zero, one minute.
	Interval time.Duration
	// MaxSources bounds the sources counted apart in one interval; the
	// others share the source "other". If zero, 1000.
	MaxSources int
	// Suppressed, if set, is called for each record counted rather than
	// written (a metric).
	Suppressed func()

	mu      sync.Mutex
	start   time.Time
	sources map[string]*sourceCount
}

type sourceCount struct {
	written    int
	suppressed int64
	first      string // the reason of the first suppressed refusal
}

func (u *Unauthenticated) defaults() (per int, interval time.Duration, max int) {
	per, interval, max = u.PerSource, u.Interval, u.MaxSources
	if per == 0 {
		per = 10
	}
	if interval == 0 {
		interval = time.Minute
	}
	if max == 0 {
		max = 1000
	}
	return per, interval, max
}

// Write records rec, a refusal of an unauthenticated call from source,
// in full or in the count. The error is the log's, for a record written
// in full.
func (u *Unauthenticated) Write(source string, rec Record) error {
	per, interval, max := u.defaults()
	rec.Source = source
	u.mu.Lock()
	now := u.Log.now()
	var flush []Record
	if u.sources == nil || now.Sub(u.start) >= interval {
		flush = u.takeLocked()
		u.start, u.sources = now, map[string]*sourceCount{}
	}
	c, ok := u.sources[source]
	if !ok {
		if len(u.sources) >= max {
			source = "other"
			c = u.sources[source]
		}
		if c == nil {
			c = &sourceCount{}
			u.sources[source] = c
		}
	}
	full := c.written < per
	if full {
		c.written++
	} else {
		c.suppressed++
		if c.first == "" {
			c.first = rec.Reason
		}
	}
	u.mu.Unlock()
	if len(flush) > 0 {
		// Counts are best effort: a failure here fails no request.
		u.Log.Write(flush...)
	}
	if !full {
		if u.Suppressed != nil {
			u.Suppressed()
		}
		return nil
	}
	return u.Log.Write(rec)
}

// takeLocked returns the aggregate records of the interval that ends.
func (u *Unauthenticated) takeLocked() []Record {
	var out []Record
	for src, c := range u.sources {
		if c.suppressed == 0 {
			continue
		}
		out = append(out, Record{Event: RefuseAggregate, Actor: "unauthenticated", Source: src, Count: c.suppressed, Window: u.start.UTC(),
			Result: Refused, Reason: fmt.Sprintf("%d more refusals of unauthenticated calls from %s (first: %s)", c.suppressed, src, c.first)})
	}
	return out
}

// Run writes the counts of each interval once it ends, until ctx ends,
// then those of the last one.
func (u *Unauthenticated) Run(ctx context.Context) {
	_, interval, _ := u.defaults()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			u.Flush()
			return
		case <-t.C:
			u.mu.Lock()
			var flush []Record
			if u.sources != nil && u.Log.now().Sub(u.start) >= interval {
				flush = u.takeLocked()
				u.sources = nil
			}
			u.mu.Unlock()
			if len(flush) > 0 {
				u.Log.Write(flush...)
			}
		}
	}
}

// Flush writes the counts so far.
func (u *Unauthenticated) Flush() error {
	u.mu.Lock()
	flush := u.takeLocked()
	u.sources = nil
	u.mu.Unlock()
	if len(flush) == 0 {
		return nil
	}
	return u.Log.Write(flush...)
}
