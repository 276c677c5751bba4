package grpcbuf

import (
	"testing"

	"google.golang.org/grpc/mem"
)

// TestDefaultPool: the process's default pool is ours (a message of 45
// KiB gets a 64 KiB buffer, not a mebibyte), and a buffer comes back
// cleared whatever was written to it before.
func TestDefaultPool(t *testing.T) {
	pool := mem.DefaultBufferPool()
	buf := pool.Get(45 << 10)
	if len(*buf) != 45<<10 || cap(*buf) != 64<<10 {
		t.Fatalf("a 45 KiB buffer has length %d and capacity %d, want 45 KiB of 64 KiB", len(*buf), cap(*buf))
	}
	for i := range *buf {
		(*buf)[i] = 0xff
	}
	pool.Put(buf)
	again := pool.Get(60 << 10)
	for i, b := range *again {
		if b != 0 {
			t.Fatalf("byte %d of a reused buffer is %#x, want 0", i, b)
		}
	}
}

// BenchmarkGet45KiB is a buffer for one batch of 30 X.509-SVIDs from the
// pool with gRPC's default tiers (the baseline) and from ours.
func BenchmarkGet45KiB(b *testing.B) {
	for name, exps := range map[string][]uint8{"grpc-default": {8, 12, 14, 15, 20}, "grpcbuf": Exponents} {
		b.Run(name, func(b *testing.B) {
			pool, err := mem.NewBinaryTieredBufferPool(exps...)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				buf := pool.Get(45 << 10)
				pool.Put(buf)
			}
		})
	}
}
