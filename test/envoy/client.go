package envoy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/inflight-dev/inflight/mesh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// ErrMessageTimeout is Result.ProcessorErr when the per-message timer fired.
var ErrMessageTimeout = errors.New("ext_proc_error_per-message_timeout_exceeded")

// Client is the Envoy side of ext_proc for many HTTP requests: one
// ext_proc filter configuration talking to one or more server replicas. It
// holds ConnsPerReplica grpc.ClientConns per replica and picks one per side
// stream. Do may be called from many goroutines at once.
type Client struct {
	cfg  Config
	spec *filterSpec
	// endpoints are every server ever given, in order (StreamInfo.Replica
	// indexes them); active are the indices of those new streams may use
	// (the cluster's EDS set), replaced by SetEndpoints.
	mu        sync.Mutex // guards endpoints' growth and closed
	endpoints []*endpoint
	active    atomic.Pointer[[]int]
	closed    bool

	rr      atomic.Uint64
	connRR  atomic.Uint64
	tags    atomic.Uint64
	reqIDs  atomic.Uint64
	rndMu   sync.Mutex
	rnd     *rand.Rand
	streams sync.WaitGroup // side streams not yet closed
}

type conn struct {
	cc     *grpc.ClientConn
	client extprocv3.ExternalProcessorClient
	tab    *wireTable
}

// endpoint is one server (an EDS host) and the client's HTTP/2 connections
// to it (one per Envoy worker). A connection that receives GOAWAY (the
// server's graceful stop) takes no new streams; the next stream dials
// again, and a refused dial fails that stream (Unavailable): fail-open,
// as in Envoy's connection pool.
type endpoint struct {
	addr  string
	conns []*conn
}

// NewClient connects (lazily, as gRPC does) to the servers at addrs, each a
// loopback host:port: the extproc cluster's initial endpoints.
func NewClient(cfg Config, addrs ...string) (*Client, error) {
	spec, err := cfg.spec()
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, errors.New("envoy harness: no server address")
	}
	c := &Client{cfg: cfg.withDefaults(), spec: spec}
	c.rnd = rand.New(rand.NewPCG(uint64(cfg.Seed), 0x9e3779b97f4a7c15))
	// Tags are unique across clients talking to the same server.
	c.tags.Store(rand.Uint64N(1<<40) << 20)
	if err := c.SetEndpoints(addrs...); err != nil {
		_ = c.closeConns()
		return nil, err
	}
	return c, nil
}

// SetEndpoints is an EDS update as Envoy applies it: new streams go only to
// addrs from now on (none: every new stream fails, fail-open); streams open
// on an endpoint that left the set carry on over their connection. An
// address seen before keeps its connections and its StreamInfo.Replica
// index; a new one gets the next index.
func (c *Client) SetEndpoints(addrs ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("envoy harness: client closed")
	}
	active := make([]int, 0, len(addrs))
	for _, a := range addrs {
		i := slices.IndexFunc(c.endpoints, func(e *endpoint) bool { return e.addr == a })
		if i < 0 {
			e, err := c.dialEndpoint(a)
			if err != nil {
				return err
			}
			c.endpoints = append(c.endpoints, e)
			i = len(c.endpoints) - 1
		}
		active = append(active, i)
	}
	c.active.Store(&active)
	return nil
}

// Endpoints returns every address given so far, indexed as
// StreamInfo.Replica.
func (c *Client) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.endpoints))
	for i, e := range c.endpoints {
		out[i] = e.addr
	}
	return out
}

func (c *Client) dialEndpoint(a string) (*endpoint, error) {
	if err := checkLoopback(a); err != nil {
		return nil, err
	}
	e := &endpoint{addr: a}
	for range c.cfg.ConnsPerReplica {
		tab := newWireTable()
		dial := func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			if c.cfg.TLS != nil {
				tc := tls.Client(nc, withH2(c.cfg.TLS))
				if err := tc.HandshakeContext(ctx); err != nil {
					nc.Close()
					return nil, err
				}
				return tab.wrap(tc), nil
			}
			return tab.wrap(nc), nil
		}
		cc, err := grpc.NewClient("passthrough:///"+a,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(dial),
			grpc.WithDisableRetry(), // one stream per HTTP request, as Envoy
		)
		if err != nil {
			for _, cn := range e.conns {
				_ = cn.cc.Close()
			}
			return nil, err
		}
		e.conns = append(e.conns, &conn{cc: cc, client: extprocv3.NewExternalProcessorClient(cc), tab: tab})
	}
	return e, nil
}

// withH2 offers "h2" by ALPN unless the configuration names protocols.
func withH2(c *tls.Config) *tls.Config {
	if len(c.NextProtos) > 0 {
		return c
	}
	c = c.Clone()
	c.NextProtos = []string{"h2"}
	return c
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("envoy harness: address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("envoy harness: address %q is not a loopback IP", addr)
	}
	return nil
}

// Config returns the configuration with the harness's knobs defaulted.
func (c *Client) Config() Config { return c.cfg }

// DeferredCloseTimeout is the effective deferred_close_timeout (used only
// in observability mode).
func (c *Client) DeferredCloseTimeout() time.Duration { return c.spec.deferredClose }

// MessageTimeout is the effective message_timeout.
func (c *Client) MessageTimeout() time.Duration { return c.spec.messageTimeout }

// Observe reports whether the filter runs in observability mode.
func (c *Client) Observe() bool { return c.spec.observe }

// Wait blocks until every side stream opened so far is closed (including
// deferred and graceful closes). Call it once the Do calls have returned.
func (c *Client) Wait() { c.streams.Wait() }

// Close waits for the open side streams, then closes the connections.
func (c *Client) Close() error {
	c.Wait()
	return c.closeConns()
}

func (c *Client) closeConns() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for _, e := range c.endpoints {
		for _, cn := range e.conns {
			errs = append(errs, cn.cc.Close())
		}
	}
	return errors.Join(errs...)
}

// errNoHealthyUpstream is a stream's error when the cluster has no endpoint.
var errNoHealthyUpstream = status.Error(codes.Unavailable, "envoy harness: no healthy upstream in the extproc cluster")

// pick chooses the endpoint and connection of a new stream among the active
// endpoints (per-stream load balancing).
func (c *Client) pick() (int, *conn, error) {
	active := *c.active.Load()
	if len(active) == 0 {
		return 0, nil, errNoHealthyUpstream
	}
	var k int
	switch c.cfg.Balancing {
	case Random:
		c.rndMu.Lock()
		k = c.rnd.IntN(len(active))
		c.rndMu.Unlock()
	default:
		k = int((c.rr.Add(1) - 1) % uint64(len(active)))
	}
	i := active[k]
	c.mu.Lock()
	e := c.endpoints[i]
	c.mu.Unlock()
	return i, e.conns[int((c.connRR.Add(1)-1)%uint64(len(e.conns)))], nil
}

// Do runs one HTTP request through the filter and returns when the request
// is over for the downstream client. The side stream may close later
// (Result.Wait). ctx bounds the upstream delays only: cancelling it acts as
// a client abort at the current point.
func (c *Client) Do(ctx context.Context, req *Request) *Result {
	f := &filter{c: c, cfg: &c.cfg, spec: c.spec, mode: c.spec.mode, req: req,
		res: &Result{done: make(chan struct{})}, endOff: -1}
	f.run(ctx)
	return f.res
}

// filter is one HTTP stream's ext_proc filter instance. All its methods run
// on the goroutine of Do, and after Do returns only on the goroutine doing
// the deferred close; the receive goroutine touches only replies, recvErr,
// recvAt (published by closing recvDone) and ignore.
type filter struct {
	c    *Client
	cfg  *Config
	spec *filterSpec
	mode *filterv3.ProcessingMode
	req  *Request
	res  *Result

	cn      *conn
	ws      *wireStream
	tag     uint64
	stream  extprocv3.ExternalProcessor_ProcessClient
	cancel  context.CancelFunc
	replies chan received
	ignore  atomic.Bool
	// local: the server sent an immediate_response, even one Envoy
	// ignored (it came after the client left).
	local atomic.Bool

	recvDone chan struct{}
	recvErr  error
	recvAt   time.Time

	queued        int64 // gRPC payload bytes handed to SendMsg
	endOff        int64 // payload offset of the first message that may end the request, or -1
	reqAttrsSent  bool
	respAttrsSent bool
	done          bool // processing_complete_: the processor is no longer used for this request
	closed        bool
	aborted       bool // the client reset while a reply was awaited
	localStatus   int
	endAck        time.Time
	reqSentAt     time.Time // when request_headers was handed to the stream
	resp          *Response // the response being encoded (the upstream's, or the router's local reply)
}

type received struct {
	msg *extprocv3.ProcessingResponse
	at  time.Time
}

// routerLocalReply is the local reply Envoy's router sends after an upstream
// reset before response headers, or when it finds no host (uh): a 503 with
// a short text body and no trailers, encoded at once (so its body reaches
// the filter while it waits for a header reply).
func routerLocalReply(uh bool) *Response {
	body := "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	if uh {
		body = "no healthy upstream"
	}
	return &Response{
		Status:                503,
		Headers:               []Header{{"content-length", strconv.Itoa(len(body))}, {"content-type", "text/plain"}},
		Body:                  [][]byte{[]byte(body)},
		BodyBeforeHeaderReply: true,
	}
}

func (f *filter) run(ctx context.Context) {
	req, res, m := f.req, f.res, f.mode
	fail := req.Failure
	if fail.Phase == AbortBeforeRequestHeaders {
		res.Outcome = NeverStarted
		close(res.done)
		return
	}
	// decodeHeaders / decodeData / decodeTrailers.
	hasBody, hasTrailers := len(req.Body) > 0, len(req.Trailers) > 0
	if m.RequestHeaderMode == filterv3.ProcessingMode_SEND {
		if !f.process(RequestHeaders, f.headers(RequestHeaders, !hasBody && !hasTrailers)) {
			f.endLocal()
			return
		}
	}
	if m.RequestBodyMode == filterv3.ProcessingMode_STREAMED {
		for i, b := range req.Body {
			if !f.process(RequestBody, body(RequestBody, b, i == len(req.Body)-1 && !hasTrailers)) {
				f.endLocal()
				return
			}
		}
	}
	if hasTrailers && m.RequestTrailerMode == filterv3.ProcessingMode_SEND {
		if !f.process(RequestTrailers, f.trailers(RequestTrailers, req.Trailers)) {
			f.endLocal()
			return
		}
	}
	switch fail.Phase {
	case AbortAfterRequestHeaders:
		f.delay(ctx, fail.Delay)
		res.Outcome = DownstreamReset
		f.destroy()
		return
	case AbortAwaitingReply:
		// The client resets Delay after request_headers went out; the
		// reply may have come back already (control) or not (then process
		// returned false above).
		wait := fail.Delay
		if !f.reqSentAt.IsZero() {
			wait -= time.Since(f.reqSentAt)
		}
		f.delay(ctx, wait)
		res.Outcome = DownstreamReset
		f.destroy()
		return
	}
	if req.NoHealthyUpstream != nil && req.NoHealthyUpstream() {
		// The router's host selection fails: a local 503 at once, before
		// any upstream request (so before retry state exists).
		res.NoHealthyUpstream = true
		fail = Failure{Phase: UpstreamResetBeforeHeaders}
	} else if !f.delay(ctx, req.Response.HeadersDelay) { // the upstream thinks
		res.Outcome = DownstreamReset
		f.destroy()
		return
	}
	f.resp = &req.Response
	localReply := false
	if fail.Phase == UpstreamResetBeforeHeaders {
		f.delay(ctx, fail.Delay)
		if !f.spec.localRepliesSent {
			// The router's 503 does not pass through ext_proc.
			res.Outcome, res.Status = LocalReply, 503
			f.destroy()
			return
		}
		f.resp, localReply, fail = routerLocalReply(res.NoHealthyUpstream), true, Failure{}
	}
	// encodeHeaders.
	resp := f.resp
	hasRespBody, hasRespTrailers := len(resp.Body) > 0, len(resp.Trailers) > 0
	if f.spec.observe && m.ResponseHeaderMode == filterv3.ProcessingMode_SEND {
		// sendHeadersInObservabilityMode: sent, never awaited; the ≥ 1.37
		// close below is not reached in this mode.
		f.process(ResponseHeaders, f.headers(ResponseHeaders, !hasRespBody && !hasRespTrailers))
	} else {
		if m.ResponseHeaderMode == filterv3.ProcessingMode_SEND {
			if !f.process(ResponseHeaders, f.headers(ResponseHeaders, !hasRespBody && !hasRespTrailers)) {
				f.endLocal()
				return
			}
		}
		if f.spec.earlyClose && f.responseUnprocessed() {
			f.closeStream() // encodeHeaders: noExternalProcess()
		}
	}
	res.Status = cmp.Or(resp.Status, 200)
	// encodeData.
	streamed := m.ResponseBodyMode == filterv3.ProcessingMode_STREAMED
	midBody := fail.Phase == AbortMidResponseBody || fail.Phase == UpstreamResetMidBody
	if !hasRespBody && !hasRespTrailers {
		midBody = false // the response ended with its headers
	}
	for i, b := range resp.Body {
		if midBody && i == fail.AfterChunks {
			break
		}
		if !f.delay(ctx, resp.ChunkDelay) {
			midBody = true
			break
		}
		if req.OnResponseChunk != nil {
			req.OnResponseChunk(i, res)
		}
		if streamed {
			eos := i == len(resp.Body)-1 && !hasRespTrailers
			if !f.process(ResponseBody, body(ResponseBody, b, eos)) {
				f.endLocal()
				return
			}
		}
	}
	if midBody {
		f.delay(ctx, fail.Delay)
		res.Outcome = DownstreamReset
		f.destroy()
		return
	}
	// encodeTrailers: sent only in mode SEND. With SKIP nothing is sent,
	// not even a STREAMED body's missing end_of_stream (onTrailers).
	if hasRespTrailers && m.ResponseTrailerMode == filterv3.ProcessingMode_SEND {
		if !f.process(ResponseTrailers, f.trailers(ResponseTrailers, resp.Trailers)) {
			f.endLocal()
			return
		}
	}
	res.Outcome = Completed
	if localReply {
		res.Outcome = LocalReply
	}
	f.destroy()
}

// responseUnprocessed is encoding_state_.noExternalProcess(): the response
// path sends nothing to the processor.
func (f *filter) responseUnprocessed() bool {
	m := f.mode
	return m.ResponseHeaderMode == filterv3.ProcessingMode_SKIP &&
		m.ResponseBodyMode == filterv3.ProcessingMode_NONE &&
		m.ResponseTrailerMode != filterv3.ProcessingMode_SEND
}

// endLocal ends a request the filter stopped: a downstream reset if the
// client went away or the response had started, else a local reply.
func (f *filter) endLocal() {
	switch {
	case f.aborted:
		f.res.Outcome = DownstreamReset
	case f.res.Status != 0:
		f.res.Outcome = DownstreamReset
	default:
		f.res.Outcome, f.res.Status = LocalReply, f.localStatus
	}
	f.destroy()
}

// delay waits d (the upstream's or client's timing); false if ctx ended.
func (f *filter) delay(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// process sends one message and, outside observability mode, awaits its
// reply under the per-message timer (which one override_message_timeout
// reply may restart). It returns false if the request must end with a local
// reply or reset.
func (f *filter) process(kind Kind, msg *extprocv3.ProcessingRequest) bool {
	if f.done {
		return true
	}
	if f.stream == nil {
		if err := f.open(); err != nil {
			// The stream could not open: failure_mode_allow applies.
			return f.failure(err, f.spec.statusOnError)
		}
	}
	sentAt, ok := f.send(kind, msg)
	if kind == RequestHeaders {
		f.reqSentAt = sentAt
	}
	if !ok {
		return f.afterStreamEnd()
	}
	if f.spec.observe {
		return true
	}
	t := time.NewTimer(f.spec.messageTimeout)
	defer t.Stop()
	var abort <-chan time.Time
	if kind == RequestHeaders && f.req.Failure.Phase == AbortAwaitingReply {
		a := time.NewTimer(max(0, f.req.Failure.Delay-time.Since(sentAt)))
		defer a.Stop()
		abort = a.C
	}
	overridden := false
	for {
		select {
		case r := <-f.replies:
			if d := r.msg.GetOverrideMessageTimeout(); d != nil {
				// onNewTimeout: at most once per message, 1 ms to
				// max_message_timeout; the rest of the message is ignored.
				if v := d.AsDuration(); !overridden && d.IsValid() && v >= time.Millisecond && v <= f.spec.maxMessageTimeout {
					overridden = true
					f.res.TimeoutOverrides++
					t.Reset(v)
				} else {
					f.res.IgnoredOverrides++
				}
				continue
			}
			return f.onReply(kind, msg, sentAt, r)
		case <-f.recvDone:
			return f.afterStreamEnd()
		case <-t.C:
			return f.failure(ErrMessageTimeout, 504)
		case <-abort:
			// The client is gone (onDestroy stops the timers); the reply,
			// if it still comes, is ignored.
			f.aborted = true
			return false
		}
	}
}

func (f *filter) onReply(kind Kind, msg *extprocv3.ProcessingRequest, sentAt time.Time, r received) bool {
	res := f.res
	if res.Stream.FirstReply.IsZero() {
		// Any reply, even a spurious one, proves the server read a message.
		res.Stream.FirstReply = r.at
	}
	if ir := r.msg.GetImmediateResponse(); ir != nil && !f.spec.disableImmediate {
		res.ImmediateResponse = true
		// sendImmediateResponse: a status below 200 (or none) becomes 200.
		f.localStatus = max(int(ir.GetStatus().GetCode()), 200)
		for _, h := range ir.GetHeaders().GetSetHeaders() {
			v := string(h.GetHeader().GetRawValue())
			if v == "" {
				v = h.GetHeader().GetValue()
			}
			res.LocalHeaders = append(res.LocalHeaders, Header{Name: strings.ToLower(h.GetHeader().GetKey()), Value: v})
		}
		res.LocalDetails = ir.GetDetails()
		f.closeStream()
		return false
	}
	if !replyMatches(kind, r.msg) {
		return f.failure(status.Errorf(codes.FailedPrecondition, "spurious message %T for %v", r.msg.GetResponse(), kind), f.spec.statusOnError)
	}
	res.Replies = append(res.Replies, Reply{Kind: kind, Latency: r.at.Sub(sentAt)})
	if endsRequest(kind, msg) {
		f.endAck = r.at
	}
	if f.spec.earlyClose && f.lastExpected(kind, msg) {
		f.closeStream() // closeGrpcStreamIfLastRespReceived
	}
	return true
}

// lastExpected is closeGrpcStreamIfLastRespReceived's test (Envoy ≥ 1.37):
// no further message can follow the reply to this one.
func (f *filter) lastExpected(kind Kind, msg *extprocv3.ProcessingRequest) bool {
	m := f.mode
	switch kind {
	case RequestHeaders:
		eos := msg.GetRequestHeaders().GetEndOfStream()
		return (eos || (m.RequestBodyMode == filterv3.ProcessingMode_NONE && m.RequestTrailerMode != filterv3.ProcessingMode_SEND)) &&
			f.responseUnprocessed()
	case RequestBody:
		return msg.GetRequestBody().GetEndOfStream() && f.responseUnprocessed()
	case RequestTrailers:
		return f.responseUnprocessed()
	case ResponseHeaders:
		if msg.GetResponseHeaders().GetEndOfStream() { // hasNoBody()
			return true
		}
		if m.ResponseBodyMode != filterv3.ProcessingMode_NONE {
			return false
		}
		if m.ResponseTrailerMode != filterv3.ProcessingMode_SEND {
			return true
		}
		// envoy#42507: trailers SEND, body NONE, and the whole body already
		// arrived without trailers while Envoy waited for this reply.
		return f.resp.BodyBeforeHeaderReply && len(f.resp.Trailers) == 0
	case ResponseBody:
		return msg.GetResponseBody().GetEndOfStream()
	case ResponseTrailers:
		return true
	}
	return false
}

// afterStreamEnd handles a stream the server ended: with OK the filter
// carries on without the processor; with an error it is a gRPC failure.
func (f *filter) afterStreamEnd() bool {
	<-f.recvDone
	if f.recvErr == nil {
		f.done = true
		f.closeStream()
		return true
	}
	if f.spec.observe {
		// Observability mode never pauses on the processor.
		f.res.ProcessorErr = f.recvErr
		f.done = true
		f.closeStream()
		return true
	}
	return f.failure(f.recvErr, f.spec.statusOnError)
}

// failure applies failure_mode_allow after a timeout, gRPC error, spurious
// reply or a stream that could not open.
func (f *filter) failure(err error, closedStatus int) bool {
	f.res.ProcessorErr = err
	f.done = true
	f.closeStream()
	if f.spec.failOpen {
		f.res.FailOpen = true
		return true
	}
	f.localStatus = closedStatus
	return false
}

func replyMatches(kind Kind, r *extprocv3.ProcessingResponse) bool {
	switch r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return kind == RequestHeaders
	case *extprocv3.ProcessingResponse_RequestBody:
		return kind == RequestBody
	case *extprocv3.ProcessingResponse_RequestTrailers:
		return kind == RequestTrailers
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return kind == ResponseHeaders
	case *extprocv3.ProcessingResponse_ResponseBody:
		return kind == ResponseBody
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		return kind == ResponseTrailers
	}
	return false
}

// endsRequest: a message after which a server counting requests ends this
// one (response end_of_stream or trailers).
func endsRequest(kind Kind, msg *extprocv3.ProcessingRequest) bool {
	switch kind {
	case ResponseHeaders:
		return msg.GetResponseHeaders().GetEndOfStream()
	case ResponseBody:
		return msg.GetResponseBody().GetEndOfStream()
	case ResponseTrailers:
		return true
	}
	return false
}

// open starts the side stream: lazily, on the first message.
func (f *filter) open() error {
	idx, cn, err := f.c.pick()
	if err != nil {
		f.res.Stream.Refused = true
		return err
	}
	f.cn = cn
	f.res.Stream.Replica = idx
	f.tag = f.c.tags.Add(1)
	f.res.Stream.Tag = f.tag
	f.ws = cn.tab.register(f.tag)
	ctx, cancel := context.WithCancel(context.Background())
	ctx = metadata.AppendToOutgoingContext(ctx, StreamTagHeader, strconv.FormatUint(f.tag, 10))
	for k, v := range f.c.cfg.Metadata {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	st, err := cn.client.Process(ctx)
	if err != nil {
		// No connection to the endpoint (refused dial after a GOAWAY, a
		// stopped server): the stream never existed.
		cancel()
		cn.tab.forget(f.tag)
		f.res.Stream.Refused = true
		return err
	}
	f.stream, f.cancel = st, cancel
	f.replies = make(chan received, 16)
	f.recvDone = make(chan struct{})
	f.res.Stream.Opened = true
	f.c.streams.Add(1)
	go f.receive()
	return nil
}

func (f *filter) receive() {
	for {
		m, err := f.stream.Recv()
		now := time.Now()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			f.recvErr, f.recvAt = err, now
			close(f.recvDone)
			return
		}
		if m.GetImmediateResponse() != nil {
			f.local.Store(true)
		}
		if f.spec.observe || f.ignore.Load() {
			continue // Envoy ignores the reply
		}
		select {
		case f.replies <- received{msg: m, at: now}:
		default: // more unsolicited replies than anyone awaits: dropped
		}
	}
}

// send sends msg on the open stream with the per-stream extras
// (observability flag, protocol_config, attributes once per direction).
// ok=false means the stream had already ended (see afterStreamEnd).
func (f *filter) send(kind Kind, msg *extprocv3.ProcessingRequest) (time.Time, bool) {
	first := len(f.res.Sent) == 0
	msg.ObservabilityMode = f.spec.observe
	if first && !f.spec.observe && !f.cfg.NoProtocolConfig {
		msg.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  f.mode.RequestBodyMode,
			ResponseBodyMode: f.mode.ResponseBodyMode,
		}
	}
	if kind < ResponseHeaders && !f.reqAttrsSent {
		f.reqAttrsSent = true
		if s := attributesStruct(f.req.Attributes, f.spec.requestAttributes); s != nil {
			msg.Attributes = map[string]*structpb.Struct{mesh.AttributesKey: s}
		}
	}
	if kind >= ResponseHeaders && !f.respAttrsSent {
		f.respAttrsSent = true
		if s := attributesStruct(f.req.ResponseAttributes, f.spec.responseAttributes); s != nil {
			msg.Attributes = map[string]*structpb.Struct{mesh.AttributesKey: s}
		}
	}
	if f.endOff < 0 && endsRequest(kind, msg) {
		f.endOff = f.queued
	}
	f.queued += 5 + int64(proto.Size(msg))
	f.res.Sent = append(f.res.Sent, kind)
	now := time.Now()
	if err := f.stream.Send(msg); err != nil {
		return now, false
	}
	return now, true
}

// destroy is onDestroy: close the stream now, or after
// deferred_close_timeout in observability mode.
func (f *filter) destroy() {
	if f.stream == nil || f.closed {
		if f.stream == nil {
			close(f.res.done)
		}
		return
	}
	if f.spec.observe {
		go func() {
			var fire <-chan time.Time
			if f.cfg.deferredClock != nil {
				fire = f.cfg.deferredClock(f.spec.deferredClose)
			} else {
				t := time.NewTimer(f.spec.deferredClose)
				defer t.Stop()
				fire = t.C
			}
			select {
			case <-fire:
			case <-f.recvDone: // the server ended it first
			}
			f.closeStream()
		}()
		return
	}
	f.closeStream()
}

// closeStream closes the side stream in the configured style, at most once,
// then finalizes Result.Stream and closes Result.done.
func (f *filter) closeStream() {
	if f.stream == nil || f.closed {
		return
	}
	f.closed, f.done = true, true
	f.ignore.Store(true) // replies from now on are late: ignored
	tab, ws, si := f.cn.tab, f.ws, &f.res.Stream
	style := f.cfg.CloseStyle
	si.Close = style
	wctx, wcancel := context.WithTimeout(context.Background(), f.cfg.WireTimeout)
	defer wcancel()
	queued := f.queued
	written := func(w *wireStream) bool { return w.dataWritten >= queued }
	halfClosed := func(w *wireStream) bool { return w.endStream && w.dataWritten >= queued }
	wait := func(cond func(*wireStream) bool) error {
		// Stop waiting if the RPC already ended: nothing more will be written.
		stop, cancel := context.WithCancel(wctx)
		defer cancel()
		go func() {
			select {
			case <-f.recvDone:
				cancel()
			case <-stop.Done():
			}
		}()
		err := tab.waitWritten(stop, ws, cond)
		if err != nil && isClosed(f.recvDone) {
			return nil
		}
		return err
	}
	switch {
	case f.cfg.naiveReset:
		_ = f.stream.CloseSend()
	case style == CloseGraceful:
		_ = f.stream.CloseSend()
		t := time.NewTimer(f.cfg.GracefulCloseTimeout)
		select {
		case <-f.recvDone:
		case <-t.C:
			si.WireErr = wait(halfClosed)
		}
		t.Stop()
	case style == CloseResetOnly:
		si.WireErr = wait(written)
	default:
		_ = f.stream.CloseSend()
		si.WireErr = wait(halfClosed)
	}
	f.cancel()
	<-f.recvDone
	// Canceled is our own cancel; anything else means the server ended the
	// RPC (its status arrived), so no RST_STREAM follows.
	if status.Code(f.recvErr) != codes.Canceled {
		f.endAck = latest(f.endAck, f.recvAt)
	} else {
		// Our cancel resets the stream: wait until the RST is written so the
		// timeline is complete.
		rctx, rcancel := context.WithTimeout(context.Background(), f.cfg.WireTimeout)
		_ = tab.waitWritten(rctx, ws, func(w *wireStream) bool { return w.rst })
		rcancel()
	}
	si.ServerStatus = f.recvErr
	si.Bytes = f.queued
	first, ok := tab.writtenAt(ws, 0)
	if ok {
		si.FirstWrite = first
	}
	endAt, rstAt := tab.ends(ws)
	si.HalfClosed, si.Reset = !endAt.IsZero(), !rstAt.IsZero()
	if f.endOff >= 0 {
		if at, ok := tab.writtenAt(ws, f.endOff); ok {
			si.EndWrite = at
		}
	}
	for _, at := range []time.Time{endAt, rstAt} {
		if si.EndWrite.IsZero() || (!at.IsZero() && at.Before(si.EndWrite)) {
			si.EndWrite = at
		}
	}
	si.EndAck = f.endAck
	// After an immediate_response (used, or late: the client had left) the
	// server ending the RPC first is the protocol: it answered the request.
	si.EndedByServer = si.EndWrite.IsZero() && !si.FirstWrite.IsZero() && f.recvErr == nil && !f.local.Load()
	si.Lost = si.FirstWrite.IsZero() && f.queued > 0
	si.Uncertain = si.FirstReply.IsZero() && si.Reset && !si.FirstWrite.IsZero() &&
		rstAt.Sub(si.FirstWrite) < f.cfg.UncertainWindow
	tab.forget(f.tag)
	f.c.streams.Done()
	close(f.res.done)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// headers builds an HttpHeaders message as Envoy does: lower-cased keys,
// pseudo-headers first, values in raw_value (or value), only the headers
// forward_rules let through.
func (f *filter) headers(kind Kind, eos bool) *extprocv3.ProcessingRequest {
	req := f.req
	var hs []Header
	if kind == RequestHeaders {
		hs = []Header{
			{":method", cmp.Or(req.Method, "POST")},
			{":path", cmp.Or(req.Path, "/v1/completions")},
			{":authority", cmp.Or(req.Authority, "model")},
			{":scheme", cmp.Or(req.Scheme, "http")},
			{"x-request-id", fmt.Sprintf("%016x-harness", f.c.reqIDs.Add(1))},
		}
		hs = append(hs, req.Headers...)
	} else {
		hs = append([]Header{{":status", strconv.Itoa(cmp.Or(f.resp.Status, 200))}}, f.resp.Headers...)
	}
	h := &extprocv3.HttpHeaders{Headers: f.headerMap(hs), EndOfStream: eos}
	if kind == RequestHeaders {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: h}}
}

func (f *filter) trailers(kind Kind, hs []Header) *extprocv3.ProcessingRequest {
	t := &extprocv3.HttpTrailers{Trailers: f.headerMap(hs)}
	if kind == RequestTrailers {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: t}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: t}}
}

func (f *filter) headerMap(hs []Header) *corev3.HeaderMap {
	out := make([]*corev3.HeaderValue, 0, len(hs))
	for _, h := range hs {
		hv := &corev3.HeaderValue{Key: lower(h.Name)}
		if !f.spec.forwarded(hv.Key) {
			continue
		}
		if f.cfg.LegacyHeaderValue {
			hv.Value = h.Value
		} else {
			hv.RawValue = []byte(h.Value)
		}
		out = append(out, hv)
	}
	return &corev3.HeaderMap{Headers: out}
}

func body(kind Kind, b []byte, eos bool) *extprocv3.ProcessingRequest {
	hb := &extprocv3.HttpBody{Body: b, EndOfStream: eos}
	if kind == RequestBody {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}}
}
