package envoy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// StreamTagHeader is the gRPC metadata key carrying the harness's id for a
// side stream (StreamInfo.Tag). The wire tracker reads it from the HEADERS
// frame to map the HTTP/2 stream id to the harness stream. Servers ignore
// unknown metadata; test servers may use it to correlate.
const StreamTagHeader = "x-inflight-harness-stream"

// http2Preface is the client connection preface that precedes the frames.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP/2 frame types and flags the tracker cares about (RFC 9113 §6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// errConnClosed is returned by waits on a stream whose connection is gone.
var errConnClosed = errors.New("envoy harness: connection closed before the bytes were written")

// wireStream is what the tracker knows about one side stream: how many
// gRPC payload bytes of it have been written to the socket, and when.
// Guarded by the owning trackedConn's mutex.
type wireStream struct {
	dataWritten int64
	// writes records, for each DATA frame written, the cumulative payload
	// offset it reached and the time its Write call started (the earliest
	// instant the peer could have read it).
	writes    []wireWrite
	endStream bool
	endAt     time.Time
	rst       bool
	rstAt     time.Time
	rstData   int64 // payload bytes seen before the RST_STREAM
	progress  chan struct{}
	id        uint32       // HTTP/2 stream id, once its HEADERS were written
	conn      *trackedConn // the connection that carries it, once known
}

type wireWrite struct {
	upTo int64
	at   time.Time
}

// trackedConn wraps the client side of one HTTP/2 connection and parses the
// frames grpc-go writes, so the harness can wait until a stream's queued
// messages are on the wire before it resets the stream, as Envoy's codec
// does (ENVOY.md §2). Write is called only by grpc-go's single loopy writer
// goroutine; the parser state is therefore touched only inside Write, and the
// per-stream table is guarded by mu.
type trackedConn struct {
	net.Conn
	reads bool // parse what is read (server side) instead of what is written

	// Parser state: only touched inside Write (or Read if reads).
	buf         []byte
	prefaceLeft int
	dec         *hpack.Decoder
	hdrStream   uint32 // stream whose header block is being decoded
	hdrTag      uint64
	hdrHasTag   bool

	tab     *wireTable
	byID    map[uint32]*wireStream // HTTP/2 stream id → stream; guarded by tab.mu
	closed  bool                   // guarded by tab.mu
	closeCh chan struct{}
}

// wireTable is shared by the connections of one grpc.ClientConn (grpc-go may
// redial): it maps harness tags to streams before their HEADERS are written.
type wireTable struct {
	mu    sync.Mutex
	byTag map[uint64]*wireStream
	// auto: streams are created when their HEADERS are seen (the server
	// side of a test, which does not know the tags in advance).
	auto bool
}

func newWireTable() *wireTable {
	return &wireTable{byTag: make(map[uint64]*wireStream)}
}

func (tab *wireTable) wrap(c net.Conn) *trackedConn {
	t := &trackedConn{
		Conn:        c,
		tab:         tab,
		prefaceLeft: len(http2Preface),
		byID:        make(map[uint32]*wireStream),
		closeCh:     make(chan struct{}),
	}
	t.dec = hpack.NewDecoder(4096, t.onHeaderField)
	t.dec.SetAllowedMaxDynamicTableSize(1 << 20)
	return t
}

// register creates the record for a harness tag before the stream's
// HEADERS frame can be written.
func (tab *wireTable) register(tag uint64) *wireStream {
	ws := &wireStream{progress: make(chan struct{})}
	tab.mu.Lock()
	tab.byTag[tag] = ws
	tab.mu.Unlock()
	return ws
}

// forget drops a finished stream's record.
func (tab *wireTable) forget(tag uint64) {
	tab.mu.Lock()
	if ws, ok := tab.byTag[tag]; ok {
		delete(tab.byTag, tag)
		if ws.conn != nil && ws.conn.byID[ws.id] == ws {
			delete(ws.conn.byID, ws.id)
		}
	}
	tab.mu.Unlock()
}

func (t *trackedConn) onHeaderField(f hpack.HeaderField) {
	if f.Name != StreamTagHeader {
		return
	}
	if v, err := strconv.ParseUint(f.Value, 10, 64); err == nil {
		t.hdrTag, t.hdrHasTag = v, true
	}
}

// Write accounts for the frames in p, then writes them to the socket. The
// accounting comes first so that a peer's reaction to these bytes can never
// be observed before the bytes are accounted for; it stays safe for the
// reset ordering because grpc-go's single writer goroutine can only write a
// later RST_STREAM after this Write has returned. (A failed write means a
// dead connection, whose streams all end anyway.)
func (t *trackedConn) Write(p []byte) (int, error) {
	if !t.reads {
		t.parse(p, time.Now())
	}
	return t.Conn.Write(p)
}

// Read reads from the socket; on the server side of a test it accounts
// for the client's frames as they arrive.
func (t *trackedConn) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	if t.reads && n > 0 {
		t.parse(p[:n], time.Now())
	}
	return n, err
}

// Close closes the socket and releases every waiter.
func (t *trackedConn) Close() error {
	t.tab.mu.Lock()
	if !t.closed {
		t.closed = true
		close(t.closeCh)
	}
	t.tab.mu.Unlock()
	return t.Conn.Close()
}

func (t *trackedConn) parse(p []byte, at time.Time) {
	if t.prefaceLeft > 0 {
		k := min(t.prefaceLeft, len(p))
		t.prefaceLeft -= k
		p = p[k:]
	}
	t.buf = append(t.buf, p...)
	for len(t.buf) >= 9 {
		length := int(t.buf[0])<<16 | int(t.buf[1])<<8 | int(t.buf[2])
		if len(t.buf) < 9+length {
			break
		}
		typ, flags := t.buf[3], t.buf[4]
		id := binary.BigEndian.Uint32(t.buf[5:9]) & 0x7fffffff
		t.frame(typ, flags, id, t.buf[9:9+length], at)
		t.buf = t.buf[9+length:]
	}
	if len(t.buf) == 0 {
		t.buf = t.buf[:0:0] // release a large backing array
	}
}

func (t *trackedConn) frame(typ, flags byte, id uint32, payload []byte, at time.Time) {
	switch typ {
	case frameHeaders:
		if flags&flagPadded != 0 && len(payload) > 0 {
			pad := int(payload[0])
			payload = payload[1:]
			if pad <= len(payload) {
				payload = payload[:len(payload)-pad]
			}
		}
		if flags&flagPriority != 0 && len(payload) >= 5 {
			payload = payload[5:]
		}
		t.hdrStream, t.hdrHasTag = id, false
		t.headerBlock(payload, flags)
	case frameContinuation:
		t.headerBlock(payload, flags)
	case frameData:
		n := int64(len(payload))
		if flags&flagPadded != 0 && len(payload) > 0 {
			n -= 1 + int64(payload[0])
		}
		t.tab.mu.Lock()
		if ws := t.byID[id]; ws != nil {
			if n > 0 {
				ws.dataWritten += n
				ws.writes = append(ws.writes, wireWrite{upTo: ws.dataWritten, at: at})
			}
			if flags&flagEndStream != 0 {
				ws.endStream, ws.endAt = true, at
			}
			ws.signal()
		}
		t.tab.mu.Unlock()
	case frameRSTStream:
		t.tab.mu.Lock()
		if ws := t.byID[id]; ws != nil {
			ws.rst, ws.rstAt, ws.rstData = true, at, ws.dataWritten
			ws.signal()
		}
		t.tab.mu.Unlock()
	}
}

func (t *trackedConn) headerBlock(frag []byte, flags byte) {
	// Every header block must go through the decoder to keep its dynamic
	// table in step with grpc-go's encoder.
	if _, err := t.dec.Write(frag); err != nil {
		return
	}
	if flags&flagEndHeaders == 0 {
		return
	}
	_ = t.dec.Close()
	if !t.hdrHasTag {
		return
	}
	t.tab.mu.Lock()
	ws := t.tab.byTag[t.hdrTag]
	if ws == nil && t.tab.auto {
		ws = &wireStream{progress: make(chan struct{})}
		t.tab.byTag[t.hdrTag] = ws
	}
	if ws != nil {
		ws.id, ws.conn = t.hdrStream, t
		t.byID[t.hdrStream] = ws
	}
	t.tab.mu.Unlock()
}

// signal wakes the waiters of ws. Caller holds the conn's mu.
func (ws *wireStream) signal() {
	close(ws.progress)
	ws.progress = make(chan struct{})
}

// waitWritten blocks until cond(ws) holds, the stream's connection closes,
// or ctx is done. cond is evaluated under the table's lock.
func (tab *wireTable) waitWritten(ctx context.Context, ws *wireStream, cond func(*wireStream) bool) error {
	for {
		tab.mu.Lock()
		if cond(ws) {
			tab.mu.Unlock()
			return nil
		}
		ch := ws.progress
		var closeCh chan struct{}
		if ws.conn != nil {
			if ws.conn.closed {
				tab.mu.Unlock()
				return errConnClosed
			}
			closeCh = ws.conn.closeCh
		}
		tab.mu.Unlock()
		select {
		case <-ch:
		case <-closeCh:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// writtenAt returns the start time of the Write call that carried payload
// byte offset off (0-based) of the stream, and whether it was written.
func (tab *wireTable) writtenAt(ws *wireStream, off int64) (time.Time, bool) {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	for _, w := range ws.writes {
		if w.upTo > off {
			return w.at, true
		}
	}
	return time.Time{}, false
}

// ends returns when END_STREAM and RST_STREAM were written, if they were.
func (tab *wireTable) ends(ws *wireStream) (endAt, rstAt time.Time) {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	if ws.endStream {
		endAt = ws.endAt
	}
	if ws.rst {
		rstAt = ws.rstAt
	}
	return endAt, rstAt
}

// WireListener wraps a server's listener so that a test can check, per
// harness stream, what reached the server's socket before the stream's
// RST_STREAM: the proof that resets do not overtake queued messages.
type WireListener struct {
	net.Listener
	tab *wireTable
}

// NewWireListener wraps l.
func NewWireListener(l net.Listener) *WireListener {
	tab := newWireTable()
	tab.auto = true
	return &WireListener{Listener: l, tab: tab}
}

// Accept accepts a connection whose reads are parsed.
func (l *WireListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	t := l.tab.wrap(c)
	t.reads = true
	return t, nil
}

// Received reports, for the stream with tag, the gRPC payload bytes
// received in total and before its RST_STREAM, and whether END_STREAM and
// RST_STREAM arrived.
func (l *WireListener) Received(tag uint64) (total, beforeRST int64, endStream, rst bool) {
	l.tab.mu.Lock()
	defer l.tab.mu.Unlock()
	ws := l.tab.byTag[tag]
	if ws == nil {
		return 0, 0, false, false
	}
	before := ws.dataWritten
	if ws.rst {
		before = ws.rstData
	}
	return ws.dataWritten, before, ws.endStream, ws.rst
}
