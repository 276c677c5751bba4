// Package clock is the time source of time-driven code: the real clock
// in production, and Fake, a settable clock, in tests.
package clock

import (
	"sync"
	"time"
)

// Backdate is how far the CA sets an SVID's NotBefore before the moment
// it signs it, so that a peer whose clock is a little behind accepts it;
// an agent subtracts it from NotAfter - NotBefore to learn the lifetime.
const Backdate = 10 * time.Second

// Clock tells the time and waits.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed, and a
	// function that stops the wait early (and reports whether it did).
	After(d time.Duration) (<-chan time.Time, func() bool)
}

// Real is the system clock.
var Real Clock = real{}

type real struct{}

// Offset is the system clock moved by d: a host whose clock is d off,
// for tests of clock skew (the wall clock cannot be moved per process).
func Offset(d time.Duration) Clock { return offset(d) }

type offset time.Duration

func (o offset) Now() time.Time { return time.Now().Add(time.Duration(o)) }

func (offset) After(d time.Duration) (<-chan time.Time, func() bool) { return Real.After(d) }

func (real) Now() time.Time { return time.Now() }

func (real) After(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Fake is a clock that moves only when told. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*waiter
	changed chan struct{}
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewFake returns a clock set to t.
func NewFake(t time.Time) *Fake { return &Fake{now: t, changed: make(chan struct{})} }

// Now returns the clock's time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Add moves the clock forward by d and fires the waits that are due.
func (f *Fake) Add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(f.now) {
			w.ch <- f.now
			continue
		}
		kept = append(kept, w)
	}
	f.waiters = kept
	f.notify()
}

// After implements Clock.
func (f *Fake) After(d time.Duration) (<-chan time.Time, func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &waiter{at: f.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		w.ch <- f.now
		return w.ch, func() bool { return false }
	}
	f.waiters = append(f.waiters, w)
	f.notify()
	return w.ch, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, o := range f.waiters {
			if o == w {
				f.waiters = append(f.waiters[:i], f.waiters[i+1:]...)
				f.notify()
				return true
			}
		}
		return false
	}
}

// Waits returns the times that pending waits end at, and a channel
// closed at the next change of them or of the time, so that a test can
// wait until the code under test sleeps, rather than sleep itself.
func (f *Fake) Waits() ([]time.Time, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Time, len(f.waiters))
	for i, w := range f.waiters {
		out[i] = w.at
	}
	return out, f.changed
}

func (f *Fake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}
