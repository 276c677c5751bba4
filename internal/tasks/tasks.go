// Package tasks runs the long-lived parts of a program (servers, loops)
// as one group: a program's build step binds its listeners and adds a
// task for each part, with what stops it and what to close afterwards;
// Run serves them until the context ends or the first part fails, stops
// them all, and closes what was opened, in reverse order. A build that
// fails half-way closes what it opened with Close, and nothing has
// started serving.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// GracePeriod is how long a gRPC server may take to finish its calls
// when the group stops, before its connections are closed.
const GracePeriod = 5 * time.Second

// Group is a program's tasks and cleanups.
type Group struct {
	ctx     context.Context
	cancel  context.CancelFunc
	tasks   []task
	closers []func()
	closed  bool

	// Tasks started before Run (Start), and their errors.
	started []task
	wg      sync.WaitGroup
	errc    chan error
}

type task struct {
	name string
	run  func(ctx context.Context) error
	stop func()
}

// WithContext returns an empty group and a context that ends when ctx
// does or when a task of the group returns. Build the program with that
// context.
func WithContext(ctx context.Context) (*Group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &Group{ctx: ctx, cancel: cancel, errc: make(chan error, 64)}, ctx
}

// Run builds a program with build, which adds its tasks to a new group
// and binds what they serve, then runs the group (Group.Run) with the
// ready function build returns. A build that fails closes the group.
func Run(ctx context.Context, build func(ctx context.Context, g *Group) (ready func(), err error)) error {
	g, ctx := WithContext(ctx)
	ready, err := build(ctx, g)
	if err != nil {
		g.Close()
		return err
	}
	return g.Run(ready)
}

// Add adds a task. run must return once its context ends or stop has
// been called; stop may be nil when the context is enough.
func (g *Group) Add(name string, run func(ctx context.Context) error, stop func()) {
	g.tasks = append(g.tasks, task{name: name, run: run, stop: stop})
}

// Start adds a task and starts it at once, for a part that must serve
// while the rest is built (an agent's health endpoints while it attests).
// Run waits for it like the others; Close, after a failed build, stops
// it and waits for it.
func (g *Group) Start(name string, run func(ctx context.Context) error, stop func()) {
	t := task{name: name, run: run, stop: stop}
	g.started = append(g.started, t)
	g.launch(t)
}

func (g *Group) launch(t task) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := t.run(g.ctx); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			select {
			case g.errc <- fmt.Errorf("%s: %w", t.name, err):
			default:
			}
		}
		g.cancel()
	}()
}

// ServeGRPC adds a task that serves srv on lis. The group stops it
// gracefully, and closes its connections after GracePeriod (streams that
// live until their clients leave must not hold the stop). lis is closed
// even if the group never runs.
func (g *Group) ServeGRPC(name string, srv *grpc.Server, lis net.Listener) {
	g.OnClose(func() { lis.Close() })
	g.Add(name, func(context.Context) error { return srv.Serve(lis) }, func() {
		done := make(chan struct{})
		go func() {
			srv.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(GracePeriod):
			srv.Stop()
		}
	})
}

// OnClose registers fn to run when the group is closed, before the
// functions registered earlier.
func (g *Group) OnClose(fn func()) { g.closers = append(g.closers, fn) }

// Close ends the group's context, stops the tasks that were started and
// waits for them, and runs the OnClose functions, newest first. Only the
// first call does anything.
func (g *Group) Close() {
	if g.closed {
		return
	}
	g.closed = true
	g.cancel()
	g.stop()
	g.wg.Wait()
	for i := len(g.closers) - 1; i >= 0; i-- {
		g.closers[i]()
	}
}

// Run runs every task until the group's context ends or a task returns;
// then it stops every task, waits for all of them, closes the group and
// returns the first task's error (a server's ordinary "closed" error is
// none). ready, if not nil, is called once every task has started.
func (g *Group) Run(ready func()) error {
	defer g.Close()
	for _, t := range g.tasks {
		g.launch(t)
	}
	g.started = append(g.started, g.tasks...)
	g.tasks = nil
	if ready != nil {
		ready()
	}
	<-g.ctx.Done()
	g.stop()
	g.wg.Wait()
	select {
	case err := <-g.errc:
		return err
	default:
		return nil
	}
}

// stop calls the stop functions of the started tasks, at once, and
// returns when they have returned.
func (g *Group) stop() {
	var stops sync.WaitGroup
	for _, t := range g.started {
		if t.stop != nil {
			stops.Add(1)
			go func() {
				defer stops.Done()
				t.stop()
			}()
		}
	}
	stops.Wait()
	g.started = nil
}
