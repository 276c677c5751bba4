// Package backoff is the retry delay of the agent's loops that call the
// CA: it doubles from 100 ms up to a maximum, and starts again after a
// success.
package backoff

import "time"

// Backoff doubles from 100 ms to Max.
type Backoff struct {
	Max time.Duration
	cur time.Duration
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = 100 * time.Millisecond
	} else if b.cur *= 2; b.cur > b.Max {
		b.cur = b.Max
	}
	return b.cur
}

// Reset starts again from 100 ms.
func (b *Backoff) Reset() { b.cur = 0 }
