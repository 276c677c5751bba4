package tasks

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"

	"google.golang.org/grpc"
)

func TestFirstFailureStopsEveryTask(t *testing.T) {
	g, ctx := WithContext(context.Background())
	var closed []string
	g.OnClose(func() { closed = append(closed, "first") })
	g.OnClose(func() { closed = append(closed, "second") })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.ServeGRPC("grpc", grpc.NewServer(), lis)
	g.Add("loop", func(ctx context.Context) error { <-ctx.Done(); return nil }, nil)
	boom := errors.New("boom")
	stopped := make(chan struct{})
	g.Add("fails", func(context.Context) error { <-stopped; return boom }, nil)
	var readyCalled bool
	go close(stopped)
	err = g.Run(func() { readyCalled = true })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the failing task's error", err)
	}
	if !readyCalled {
		t.Error("ready was not called")
	}
	if ctx.Err() == nil {
		t.Error("the group's context did not end")
	}
	if !slices.Equal(closed, []string{"second", "first"}) {
		t.Errorf("closed %v, want newest first", closed)
	}
	if _, err := net.Dial("tcp", lis.Addr().String()); err == nil {
		t.Error("the gRPC listener still accepts after Run")
	}
}

func TestCloseWithoutRun(t *testing.T) {
	g, ctx := WithContext(context.Background())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.ServeGRPC("grpc", grpc.NewServer(), lis)
	n := 0
	g.OnClose(func() { n++ })
	g.Close()
	g.Close()
	if n != 1 {
		t.Errorf("closers ran %d times, want once", n)
	}
	if ctx.Err() == nil {
		t.Error("Close did not end the context")
	}
	if _, err := net.Dial("tcp", lis.Addr().String()); err == nil {
		t.Error("a build that failed left its listener open")
	}
}

func TestContextEndStopsCleanly(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	g, _ := WithContext(parent)
	g.Add("loop", func(ctx context.Context) error { <-ctx.Done(); return nil }, nil)
	g.Add("server", func(ctx context.Context) error { <-ctx.Done(); return grpc.ErrServerStopped }, nil)
	cancel()
	if err := g.Run(nil); err != nil {
		t.Fatalf("Run = %v, want nil after the context ended", err)
	}
}

// TestStartServesDuringTheBuild: a task started before Run runs while the
// rest is built; a build that then fails stops it and waits for it.
func TestStartServesDuringTheBuild(t *testing.T) {
	g, _ := WithContext(context.Background())
	running, stopped := make(chan struct{}), make(chan struct{})
	g.Start("early", func(ctx context.Context) error {
		close(running)
		<-ctx.Done()
		close(stopped)
		return nil
	}, nil)
	g.OnClose(func() {
		select {
		case <-stopped:
		default:
			t.Error("a closer ran before the started task had returned")
		}
	})
	<-running // it runs before Run
	g.Add("late", func(context.Context) error { t.Error("a task added after Start ran without Run"); return nil }, nil)
	// The started task returns once the context ends; Close waits for it.
	g.Close()
}
