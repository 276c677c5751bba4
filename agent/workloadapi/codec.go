package workloadapi

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// wireMessage is a response already in protobuf wire form. A snapshot's
// answer to a set of selectors is marshaled once and sent to every stream
// and caller that asks with those selectors, instead of once per send: with
// thousands of SVIDs per answer, marshaling is most of the work.
type wireMessage []byte

// codec is gRPC's proto codec, plus wireMessage sent as it is.
type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(wireMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(w)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }
func (c codec) Name() string                                { return proto.Name }

// ServerOption installs the codec that lets the handler send pre-marshaled
// responses. Servers of the Handler must use it.
func ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2(proto.Name)})
}
