// Package grpcbuf gives gRPC, process-wide, a buffer pool with tiers
// between 32 KiB and 1 MiB. gRPC's default pool has none: a message of
// 33 KiB to 1 MiB takes a 1 MiB buffer, cleared whole on every use. A
// batch of 30 X.509-SVIDs (the pods of one node) is such a message, at
// the CA that sends it and at the agent that reads it, so a rule change
// that re-issues a cluster cleared a mebibyte per node and direction.
// Programs import it for its effect:
//
//	import _ "github.com/signet-id/signet/internal/grpcbuf"
package grpcbuf

import (
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
)

// Exponents are the tiers' sizes, as powers of two: gRPC's own (256 B,
// 4 KiB, 16 KiB, 32 KiB, 1 MiB) and every power between 32 KiB and 1 MiB.
var Exponents = []uint8{8, 12, 14, 15, 16, 17, 18, 19, 20}

func init() {
	pool, err := mem.NewBinaryTieredBufferPool(Exponents...)
	if err != nil {
		panic("grpcbuf: " + err.Error())
	}
	experimental.SetDefaultBufferPool(pool)
}
