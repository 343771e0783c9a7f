package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/test/envoy"
)

// These tests drive the real Server with Gates over real gRPC on loopback,
// with a raw ext_proc client that plays Envoy's part message by message
// (test/envoy models Envoy's timers and closes around the same exchanges).

// gatedProc is a Server with Gates on a loopback listener.
type gatedProc struct {
	tr     *Tracker
	g      *Gates
	m      *Metrics
	client extprocv3.ExternalProcessorClient
}

func serveGated(t testing.TB, o GatesOptions) *gatedProc {
	t.Helper()
	reg := prometheus.NewRegistry()
	tr := NewTracker(TrackerOptions{})
	m, err := NewMetrics(reg, tr)
	if err != nil {
		t.Fatal(err)
	}
	o.Metrics = m
	g := NewGates(o)
	t.Cleanup(g.Close)
	addr := serveProc(t, tr, ServerOptions{Metrics: m, Gates: g, RetryAfter: 2 * time.Second})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &gatedProc{tr: tr, g: g, m: m, client: extprocv3.NewExternalProcessorClient(cc)}
}

func (p *gatedProc) apply(t testing.TB, d *GatesDocument) {
	t.Helper()
	if err := p.g.Apply(d); err != nil {
		t.Fatal(err)
	}
}

var (
	edgeLlama = mesh.Target{Namespace: "models", Service: "llama"}
	inVllm    = vllm
)

func attrsOf(m map[string]any) map[string]*structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return map[string]*structpb.Struct{mesh.AttributesKey: s}
}

var (
	edgeAttrs    = attrsOf(envoy.GatewayAttributes("models", "llama", 8000))
	edgeAttrsB   = attrsOf(envoy.GatewayAttributes("models", "qwen", 8000))
	inboundAttrs = sidecarAttrs()
)

// call is one request's ext_proc stream, as Envoy opens it.
type call struct {
	ps     extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
}

// start opens a stream and sends the request's request_headers.
func (p *gatedProc) start(t testing.TB, attrs map[string]*structpb.Struct, obs bool) *call {
	t.Helper()
	c, err := p.startErr(attrs, obs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *gatedProc) startErr(attrs map[string]*structpb.Struct, obs bool) (*call, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := p.client.Process(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	msg := reqHeaders(obs)
	msg.Attributes = attrs
	if err := ps.Send(msg); err != nil {
		cancel()
		return nil, err
	}
	return &call{ps: ps, cancel: cancel}, nil
}

// recv returns the next reply, failing the test after 10 s without one
// (the bound of a test that would otherwise hang, not a timing check).
func (c *call) recv(t testing.TB) *extprocv3.ProcessingResponse {
	t.Helper()
	r, err := c.recvErr(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (c *call) recvErr(d time.Duration) (*extprocv3.ProcessingResponse, error) {
	type res struct {
		r   *extprocv3.ProcessingResponse
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, err := c.ps.Recv()
		ch <- res{r, err}
	}()
	select {
	case x := <-ch:
		return x.r, x.err
	case <-time.After(d):
		c.cancel()
		return nil, fmt.Errorf("no reply within %s", d)
	}
}

// finish ends the request as Envoy does once the response headers (no
// body) are processed, and checks the stream closes.
func (c *call) finish(t testing.TB) {
	t.Helper()
	if err := c.finishErr(); err != nil {
		t.Fatal(err)
	}
}

func (c *call) finishErr() error {
	defer c.cancel()
	if err := c.ps.Send(respHeaders(true, false)); err != nil {
		return err
	}
	r, err := c.recvErr(10 * time.Second)
	if err != nil {
		return err
	}
	if r.GetResponseHeaders() == nil {
		return fmt.Errorf("reply to response_headers: %v", r)
	}
	if _, err := c.recvErr(10 * time.Second); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after the last reply: %v, want the stream closed", err)
	}
	return nil
}

// wantHeld checks r is the hold: override_message_timeout = hold + 1 s and
// nothing else.
func wantHeld(t testing.TB, r *extprocv3.ProcessingResponse, hold time.Duration) {
	t.Helper()
	if err := checkHeld(r, hold); err != nil {
		t.Fatal(err)
	}
}

func checkHeld(r *extprocv3.ProcessingResponse, hold time.Duration) error {
	if r.GetOverrideMessageTimeout() == nil || r.GetResponse() != nil || r.GetOverrideMessageTimeout().AsDuration() != hold+time.Second {
		return fmt.Errorf("hold reply %v, want only override_message_timeout %s", r, hold+time.Second)
	}
	return nil
}

func wantContinue(t testing.TB, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if r.GetRequestHeaders() == nil || r.GetOverrideMessageTimeout() != nil {
		t.Fatalf("reply %v, want the CONTINUE HeadersResponse", r)
	}
}

// wantLocal checks r is an immediate_response with status and Retry-After
// "2" (the server's 2 s), and that the stream then closes.
func wantLocal(t testing.TB, c *call, r *extprocv3.ProcessingResponse, code typev3.StatusCode) {
	t.Helper()
	if err := checkLocal(c, r, code); err != nil {
		t.Fatal(err)
	}
}

func checkLocal(c *call, r *extprocv3.ProcessingResponse, code typev3.StatusCode) error {
	ir := r.GetImmediateResponse()
	if ir == nil || ir.GetStatus().GetCode() != code {
		return fmt.Errorf("reply %v, want immediate_response %v", r, code)
	}
	var retryAfter string
	for _, h := range ir.GetHeaders().GetSetHeaders() {
		if h.GetHeader().GetKey() == "retry-after" {
			retryAfter = string(h.GetHeader().GetRawValue())
		}
	}
	if retryAfter != "2" || len(ir.GetBody()) == 0 || ir.GetDetails() == "" {
		return fmt.Errorf("immediate_response %v: want retry-after 2, a body and details", ir)
	}
	if _, err := c.recvErr(10 * time.Second); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after the local reply: %v, want the stream closed", err)
	}
	c.cancel()
	return nil
}

// eventually polls cond (the server's handlers finish a moment after the
// client sees their last reply), failing after 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not reached within 10 s: %s", what)
		}
	}
}

func rec(tr *Tracker, k mesh.Target) TargetRecord {
	for _, r := range tr.Records() {
		if r.Reason == "" && r.Namespace == k.Namespace && r.Workload == k.Workload && r.Service == k.Service && r.Pod == k.Pod {
			return r.TargetRecord
		}
	}
	return TargetRecord{}
}

const hold300 = 300 * time.Second

func TestHoldReleasedInArrivalOrderPaced(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: -1})
	p.apply(t, gatesDoc(holdGate("llama", 0)))
	calls := make([]*call, 3)
	for i := range calls {
		calls[i] = p.start(t, edgeAttrs, false)
		wantHeld(t, calls[i].recv(t), hold300) // in the queue before the next arrives
	}
	if r := rec(p.tr, edgeLlama); r.InFlight != 3 || r.Held != 3 || r.HeldTotal != 3 || r.Started != 3 || r.Source != "edge" {
		t.Fatalf("held requests are demand at once: %+v", r)
	}
	// One endpoint, two per endpoint: the first two arrivals go, in order.
	g := holdGate("llama", 1)
	g.ReleasePerEndpoint = 2
	p.apply(t, gatesDoc(g))
	if n := p.g.Held(); n != 1 {
		t.Fatalf("held after release %d, want 1 (paced)", n)
	}
	wantContinue(t, calls[0].recv(t))
	wantContinue(t, calls[1].recv(t))
	// The first released request ends: room for the third.
	calls[0].finish(t)
	wantContinue(t, calls[2].recv(t))
	calls[1].finish(t)
	calls[2].finish(t)
	// The queue is empty and the endpoint ready: a new request goes at once.
	c := p.start(t, edgeAttrs, false)
	wantContinue(t, c.recv(t))
	c.finish(t)
	eventually(t, "drained", func() bool { r := rec(p.tr, edgeLlama); return r.InFlight == 0 && r.Completed == 4 })
	if r := rec(p.tr, edgeLlama); r.Held != 0 || r.HeldTotal != 3 || r.Released != 3 || r.Started != 4 || r.HoldTimeouts != 0 || r.HoldAbandoned != 0 {
		t.Fatalf("%+v", r)
	}
	if got := testutil.ToFloat64(p.m.releases[releaseReady]); got != 3 {
		t.Fatalf("releases{cause=ready} %v, want 3", got)
	}
}

func TestHoldReleaseDelay(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: time.Hour})
	p.apply(t, gatesDoc(holdGate("llama", 0)))
	a := p.start(t, edgeAttrs, false)
	wantHeld(t, a.recv(t), hold300)
	// Ready, but not for the release delay yet: nothing goes, and a new
	// arrival queues behind the held one.
	p.apply(t, gatesDoc(holdGate("llama", 3)))
	b := p.start(t, edgeAttrs, false)
	wantHeld(t, b.recv(t), hold300)
	if n := p.g.Held(); n != 2 {
		t.Fatalf("held %d within the release delay, want 2", n)
	}
	// The gate goes (the controller stops holding): both go at once.
	p.apply(t, gatesDoc())
	wantContinue(t, a.recv(t))
	wantContinue(t, b.recv(t))
	a.finish(t)
	b.finish(t)
	if got := testutil.ToFloat64(p.m.releases[releaseNoGate]); got != 2 {
		t.Fatalf("releases{cause=no_gate} %v, want 2", got)
	}
}

func TestHoldTimeout(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: -1})
	g := holdGate("llama", 0)
	g.HoldTimeoutSeconds = 1
	p.apply(t, gatesDoc(g))
	c := p.start(t, edgeAttrs, false)
	wantHeld(t, c.recv(t), time.Second)
	wantLocal(t, c, c.recv(t), typev3.StatusCode_ServiceUnavailable)
	eventually(t, "ended", func() bool { return rec(p.tr, edgeLlama).Completed == 1 })
	if r := rec(p.tr, edgeLlama); r.InFlight != 0 || r.Held != 0 || r.HoldTimeouts != 1 || r.Released != 0 || r.HeldTotal != 1 {
		t.Fatalf("%+v", r)
	}
	if p.g.Held() != 0 || testutil.ToFloat64(p.m.ends[endHoldTimeout]) != 1 {
		t.Fatalf("held %d, ends{hold_timeout} %v", p.g.Held(), testutil.ToFloat64(p.m.ends[endHoldTimeout]))
	}
}

func TestHoldClientGone(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: -1})
	p.apply(t, gatesDoc(holdGate("llama", 0)))
	a := p.start(t, edgeAttrs, false)
	wantHeld(t, a.recv(t), hold300)
	b := p.start(t, edgeAttrs, false)
	wantHeld(t, b.recv(t), hold300)
	a.cancel() // the client went away: Envoy resets the stream
	eventually(t, "the abandoned hold released", func() bool { return rec(p.tr, edgeLlama).HoldAbandoned == 1 })
	if r := rec(p.tr, edgeLlama); r.InFlight != 1 || r.Held != 1 || r.Completed != 1 || p.g.Held() != 1 {
		t.Fatalf("%+v, gates hold %d", r, p.g.Held())
	}
	// It left the queue: the next release is b's.
	g := holdGate("llama", 1)
	g.ReleasePerEndpoint = 1
	p.apply(t, gatesDoc(g))
	wantContinue(t, b.recv(t))
	b.finish(t)
	eventually(t, "drained", func() bool { return rec(p.tr, edgeLlama).InFlight == 0 })
	if r := rec(p.tr, edgeLlama); r.Released != 1 || r.HoldAbandoned != 1 || r.Started != 2 || r.Completed != 2 {
		t.Fatalf("%+v", r)
	}
}

func TestGatesExpireReleasesEverythingShedsNothing(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: -1})
	g := holdGate("llama", 0)
	g.MaxInFlight, g.MaxHeld = 2, 2
	d := gatesDoc(g, Gate{Namespace: "models", Workload: "vllm", MaxInFlight: 1})
	d.ExpiresInSeconds = 1
	p.apply(t, d)
	a := p.start(t, edgeAttrs, false)
	wantHeld(t, a.recv(t), hold300)
	b := p.start(t, edgeAttrs, false)
	wantHeld(t, b.recv(t), hold300)
	// Without a newer document the table expires: both go (fail-open).
	wantContinue(t, a.recv(t))
	wantContinue(t, b.recv(t))
	if got := testutil.ToFloat64(p.m.gatesExpired); got != 1 {
		t.Fatalf("gates_expired_total %v", got)
	}
	if got := testutil.ToFloat64(p.m.releases[releaseExpired]); got != 2 {
		t.Fatalf("releases{cause=expired} %v", got)
	}
	// Nothing is shed or held any more, over every former limit.
	var more []*call
	for range 3 {
		c := p.start(t, edgeAttrs, false)
		wantContinue(t, c.recv(t))
		more = append(more, c)
		c = p.start(t, inboundAttrs, false)
		wantContinue(t, c.recv(t))
		more = append(more, c)
	}
	for _, c := range append(more, a, b) {
		c.finish(t)
	}
	if r := rec(p.tr, edgeLlama); r.Shed != 0 || r.HeldTotal != 2 || r.Released != 2 {
		t.Fatalf("%+v", r)
	}
}

func TestShed(t *testing.T) {
	p := serveGated(t, GatesOptions{ReleaseDelay: -1, MaxHeld: 2})
	g := holdGate("llama", 0)
	g.MaxHeld = 1
	d := gatesDoc(g, Gate{Namespace: "models", Workload: "vllm", MaxInFlight: 2},
		Gate{Namespace: "models", Service: "qwen", ReadyEndpoints: 0, Hold: true, HoldTimeoutSeconds: 60, ReleasePerEndpoint: 1})
	d.Share = 0.5 // this replica's share: max_held 1 → 1 (rounded up), max_in_flight 2 → 1
	p.apply(t, d)

	// Edge: the gate's max_held.
	a := p.start(t, edgeAttrs, false)
	wantHeld(t, a.recv(t), hold300)
	s := p.start(t, edgeAttrs, false)
	wantLocal(t, s, s.recv(t), typev3.StatusCode_TooManyRequests)
	// The extproc's own --max-held (2): one more held for qwen, then shed.
	q := p.start(t, edgeAttrsB, false)
	wantHeld(t, q.recv(t), time.Minute)
	s = p.start(t, edgeAttrsB, false)
	wantLocal(t, s, s.recv(t), typev3.StatusCode_TooManyRequests)

	// Inbound: max_in_flight of the workload, this replica's share.
	i1 := p.start(t, inboundAttrs, false)
	wantContinue(t, i1.recv(t))
	s = p.start(t, inboundAttrs, false)
	wantLocal(t, s, s.recv(t), typev3.StatusCode_TooManyRequests)
	i1.finish(t)
	eventually(t, "room again", func() bool { return rec(p.tr, inVllm).InFlight == 0 })
	i2 := p.start(t, inboundAttrs, false)
	wantContinue(t, i2.recv(t))
	i2.finish(t)

	// Observability mode is never shed or held: Envoy ignores the replies.
	o1 := p.start(t, edgeAttrs, true)
	o2 := p.start(t, inboundAttrs, true)
	o3 := p.start(t, inboundAttrs, true)
	eventually(t, "observed requests counted", func() bool {
		return rec(p.tr, inVllm).InFlight == 2 && rec(p.tr, edgeLlama).InFlight == 2
	})
	for _, c := range []*call{o1, o2, o3} {
		if err := c.ps.Send(respHeaders(true, true)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.recvErr(10 * time.Second); !errors.Is(err, io.EOF) {
			t.Fatalf("observability mode: %v, want no reply and the stream closed", err)
		}
	}

	a.cancel()
	q.cancel()
	eventually(t, "drained", func() bool {
		return rec(p.tr, edgeLlama).InFlight == 0 && rec(p.tr, inVllm).InFlight == 0 && p.g.Held() == 0
	})
	e, in, b := rec(p.tr, edgeLlama), rec(p.tr, inVllm), rec(p.tr, mesh.Target{Namespace: "models", Service: "qwen"})
	if e.Shed != 1 || e.Started != 2 || e.HeldTotal != 1 || in.Shed != 1 || in.Started != 4 || b.Shed != 1 || b.Started != 1 {
		t.Fatalf("edge %+v\ninbound %+v\nqwen %+v", e, in, b)
	}
	for l, want := range map[shedLimit]float64{shedMaxHeld: 1, shedExtprocMaxHeld: 1, shedMaxInFlight: 1} {
		if got := testutil.ToFloat64(p.m.shedBy[l]); got != want {
			t.Errorf("shed_by_limit{limit=%s} %v, want %v", shedLimitNames[l], got, want)
		}
	}
}

// TestHoldRandomized mixes, on a few Services, holds, paced releases, hold
// timeouts, clients that go away at any moment, shedding, gate documents
// that change and tables that expire, from a seed; then checks that every
// count was released exactly once: nothing in flight or held, started =
// completed, each held request left the hold once, and the gates' own
// queues and counts are empty.
func TestHoldRandomized(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("INFLIGHT_HOLD_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (INFLIGHT_HOLD_SEED=%d reruns its choices; the timing is the machine's)", seed, seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	p := serveGated(t, GatesOptions{ReleaseDelay: time.Duration(rnd.IntN(3)) * 50 * time.Millisecond, MaxHeld: 40})
	services := []string{"llama", "qwen", "mistral"}
	// Each document changes a Service's gate with probability 1/3, so that
	// some holds outlive their 1 s hold timeout.
	gates := map[string]*Gate{}
	doc := func(r *rand.Rand) *GatesDocument {
		d := gatesDoc()
		d.Share = []float64{1, 0.5, 1.0 / 3}[r.IntN(3)]
		d.ExpiresInSeconds = 1 + float64(r.IntN(2))
		for _, s := range services {
			if _, ok := gates[s]; !ok || r.IntN(3) == 0 {
				gates[s] = &Gate{Namespace: "models", Service: s, Workload: s,
					ReadyEndpoints: []int{0, 0, 0, 1, 2}[r.IntN(5)], Hold: r.IntN(6) != 0,
					HoldTimeoutSeconds: 1, ReleasePerEndpoint: float64(1 + r.IntN(3)),
					MaxInFlight: float64(r.IntN(3) * 10), MaxHeld: float64(r.IntN(3) * 6)}
				if r.IntN(8) == 0 {
					gates[s] = nil // no gate for it
				}
			}
			if g := gates[s]; g != nil {
				d.Gates = append(d.Gates, *g)
			}
		}
		return d
	}
	attrs := make([]map[string]*structpb.Struct, len(services))
	for i, s := range services {
		attrs[i] = attrsOf(envoy.GatewayAttributes("models", s, 8000))
	}

	const clients, perClient = 12, 12
	p.apply(t, doc(rand.New(rand.NewPCG(seed, 1<<32))))
	stop := make(chan struct{})
	expiredOnce := make(chan struct{}) // closed after the forced expiry
	var ctl sync.WaitGroup
	ctl.Add(1)
	go func() { // the controller: a new document now and then, sometimes none for a while (expiry)
		defer ctl.Done()
		r := rand.New(rand.NewPCG(seed, 1))
		for i := 0; ; i++ {
			pause := time.Duration(r.IntN(500)) * time.Millisecond
			if i == 3 {
				// Once, surely: the controller goes quiet and the table
				// expires with requests held.
				d := doc(r)
				d.ExpiresInSeconds = 1
				if err := p.g.Apply(d); err != nil {
					t.Error(err)
					return
				}
				// Not cut short by stop: the expiry path must run
				// even when the clients finish first.
				time.Sleep(1300 * time.Millisecond)
				close(expiredOnce)
				pause = 0
			}
			select {
			case <-stop:
				return
			case <-time.After(pause):
			}
			if r.IntN(6) != 0 {
				if err := p.g.Apply(doc(r)); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()

	var mu sync.Mutex
	var total tally
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)+2))
			var my tally
			defer func() {
				mu.Lock()
				total.shed += my.shed
				total.timeouts += my.timeouts
				total.answered += my.answered
				total.held += my.held
				mu.Unlock()
			}()
			for range perClient {
				if err := oneRandomRequest(p, attrs[r.IntN(len(attrs))], r, &my); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select { // the controller has gone quiet once, whatever the clients' pace
	case <-expiredOnce:
	case <-time.After(30 * time.Second):
		t.Error("the controller goroutine never reached its forced expiry")
	}
	close(stop)
	ctl.Wait()

	eventually(t, "every count released", func() bool {
		for _, r := range p.tr.Records() {
			if r.InFlight != 0 || r.Started != r.Completed {
				return false
			}
		}
		return p.g.Held() == 0
	})
	var started, shed, heldTotal, timeouts uint64
	for _, r := range p.tr.Records() {
		if r.Held != 0 || r.HeldTotal != r.Released+r.HoldTimeouts+r.HoldAbandoned || r.Reason != "" {
			t.Errorf("record %+v", r.TargetRecord)
		}
		started += r.Started
		shed += r.Shed
		heldTotal += r.HeldTotal
		timeouts += r.HoldTimeouts
	}
	// A client that saw a reply was counted (started or shed) by the
	// server; one that went away before may not have been (ENVOY.md §2).
	if started+shed < uint64(total.answered) || started+shed > clients*perClient {
		t.Errorf("started %d + shed %d, want %d to %d", started, shed, total.answered, clients*perClient)
	}
	if shed < uint64(total.shed) || timeouts < uint64(total.timeouts) || heldTotal < uint64(total.held) {
		t.Errorf("server shed %d, hold timeouts %d, held %d; clients saw at least %+v", shed, timeouts, heldTotal, total)
	}
	p.g.mu.Lock()
	for k, st := range p.g.states {
		st.mu.Lock()
		if st.active.Load() != 0 || st.queued != 0 || st.released != 0 || st.head != nil {
			t.Errorf("gate %v: active %d queued %d released %d", k, st.active.Load(), st.queued, st.released)
		}
		st.mu.Unlock()
	}
	p.g.mu.Unlock()
	// With no gate left, a state goes once nothing is counted in it.
	p.apply(t, gatesDoc())
	if p.g.mu.Lock(); len(p.g.states) != 0 {
		t.Errorf("%d gate states left after an empty table", len(p.g.states))
	}
	p.g.mu.Unlock()
	expired := testutil.ToFloat64(p.m.gatesExpired)
	if expired == 0 {
		t.Error("the gate table never expired: the expiry path was not exercised")
	}
	t.Logf("clients saw %+v; server: started %d, shed %d, held %d, hold timeouts %d; tables expired %v, releases by cause: ready %v expired %v no_gate %v",
		total, started, shed, heldTotal, timeouts, expired, testutil.ToFloat64(p.m.releases[releaseReady]),
		testutil.ToFloat64(p.m.releases[releaseExpired]), testutil.ToFloat64(p.m.releases[releaseNoGate]))
}

// oneRandomRequest plays one request: it may go away before any reply,
// while held, or after the CONTINUE; otherwise it finishes the request.
func oneRandomRequest(p *gatedProc, attrs map[string]*structpb.Struct, r *rand.Rand, my *tally) error {
	c, err := p.startErr(attrs, false)
	if err != nil {
		return err
	}
	defer c.cancel()
	if r.IntN(20) == 0 {
		return nil // gone before any reply (the server may see only the reset)
	}
	resp, err := c.recvErr(10 * time.Second)
	if err != nil {
		return err
	}
	my.answered++
	if resp.GetOverrideMessageTimeout() != nil {
		my.held++
		if err := checkHeld(resp, time.Second); err != nil {
			return err
		}
		if r.IntN(4) == 0 {
			time.Sleep(time.Duration(r.IntN(1500)) * time.Millisecond)
			return nil // gone while held, or after its answer came
		}
		if resp, err = c.recvErr(10 * time.Second); err != nil {
			return err
		}
	}
	switch {
	case resp.GetImmediateResponse().GetStatus().GetCode() == typev3.StatusCode_TooManyRequests:
		my.shed++
		return checkLocal(c, resp, typev3.StatusCode_TooManyRequests)
	case resp.GetImmediateResponse() != nil:
		my.timeouts++
		return checkLocal(c, resp, typev3.StatusCode_ServiceUnavailable)
	case resp.GetRequestHeaders() == nil:
		return fmt.Errorf("reply %v", resp)
	}
	if r.IntN(5) == 0 {
		return nil // gone mid-response
	}
	time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
	return c.finishErr()
}

// tally is what the clients of TestHoldRandomized saw.
type tally struct{ shed, timeouts, answered, held int }
