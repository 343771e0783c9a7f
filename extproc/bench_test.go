package extproc

import (
	"context"
	"io"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/inflight-dev/inflight/mesh"
)

// BenchmarkProcess measures the handler's own cost for one SSE request in
// the control profile (request headers, response headers, 4 body chunks),
// without the gRPC transport: what extproc adds over a CONTINUE-only
// processor. Compare with the null processor in test/loadgen for the
// transport's share.
func BenchmarkProcess(b *testing.B) {
	msgs := []*extprocv3.ProcessingRequest{reqHeaders(false), respHeaders(false, false),
		respBody(false, false), respBody(false, false), respBody(false, false), respBody(true, false)}
	tr := NewTracker(TrackerOptions{})
	srv := NewServer(tr, ServerOptions{})
	st := &scriptStream{final: io.EOF, sent: make([]*extprocv3.ProcessingResponse, 0, len(msgs))}
	b.ReportAllocs()
	for b.Loop() {
		st.msgs, st.sent = msgs, st.sent[:0]
		_ = srv.Process(st)
	}
}

// BenchmarkProcessXFCC is BenchmarkProcess in the production mode: the
// caller's identity read from x-forwarded-client-cert and authorized for
// each request.
func BenchmarkProcessXFCC(b *testing.B) {
	msgs := []*extprocv3.ProcessingRequest{reqHeaders(false), respHeaders(false, false),
		respBody(false, false), respBody(false, false), respBody(false, false), respBody(true, false)}
	tr := NewTracker(TrackerOptions{})
	srv := NewServer(tr, ServerOptions{Authenticator: XFCCAuthenticator{By: extprocID},
		Policy: mesh.NewCallerPolicy("cluster.local", nil), MaxOpenStreams: 10000})
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(mesh.XFCCHeader,
		xfcc(extprocID, "spiffe://cluster.local/ns/models/sa/vllm")))
	st := &scriptStream{ctx: ctx, final: io.EOF, sent: make([]*extprocv3.ProcessingResponse, 0, len(msgs))}
	b.ReportAllocs()
	for b.Loop() {
		st.msgs, st.sent = msgs, st.sent[:0]
		_ = srv.Process(st)
	}
	if r := recordOf(b, tr, vllm, mesh.ReasonNone); r.Started == 0 {
		b.Fatal("nothing counted for the authorized caller")
	}
}

// BenchmarkProcessEdge is BenchmarkProcess for a gateway request (a Service
// target) that is not held, without gates (today's control path) and with a
// gate table in force whose gate admits it (ready endpoints, hold on,
// limits far away): the cost of holding and shedding for the requests that
// are neither. Compare the two in the same run (-count 10 and benchstat).
func BenchmarkProcessEdge(b *testing.B) {
	for _, gated := range []bool{false, true} {
		name := "no_gates"
		if gated {
			name = "gated"
		}
		b.Run(name, func(b *testing.B) {
			head := reqHeaders(false)
			head.Attributes = edgeAttrs
			msgs := []*extprocv3.ProcessingRequest{head, respHeaders(false, false),
				respBody(false, false), respBody(false, false), respBody(false, false), respBody(true, false)}
			tr := NewTracker(TrackerOptions{})
			o := ServerOptions{}
			if gated {
				g := NewGates(GatesOptions{})
				defer g.Close()
				gate := holdGate("llama", 2)
				gate.MaxInFlight, gate.MaxHeld = 1e6, 1e6
				if err := g.Apply(gatesDoc(gate)); err != nil {
					b.Fatal(err)
				}
				o.Gates = g
			}
			srv := NewServer(tr, o)
			st := &scriptStream{final: io.EOF, sent: make([]*extprocv3.ProcessingResponse, 0, len(msgs))}
			b.ReportAllocs()
			for b.Loop() {
				st.msgs, st.sent = msgs, st.sent[:0]
				_ = srv.Process(st)
			}
			if r := recordOf(b, tr, edgeLlama, mesh.ReasonNone); r.Started == 0 || r.HeldTotal != 0 {
				b.Fatalf("%+v", r.TargetRecord)
			}
		})
	}
}
