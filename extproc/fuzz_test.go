package extproc

import (
	"io"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// decodeScript turns fuzz bytes into a message sequence and a way for the
// stream to end. Each byte is one message: bits 0-2 pick the kind (7 is a
// message with no request set), bit 3 sets end_of_stream, bit 4
// observability mode, bit 5 strips the attributes. The first byte picks the
// stream's end and whether sends fail.
func decodeScript(data []byte) (msgs []*extprocv3.ProcessingRequest, final, sendErr error) {
	final = io.EOF
	if len(data) > 0 {
		switch data[0] % 4 {
		case 1:
			final = status.Error(codes.Canceled, "reset")
		case 2:
			final = status.Error(codes.Unavailable, "transport")
		case 3:
			final = status.Error(codes.DeadlineExceeded, "deadline")
		}
		if data[0]&8 != 0 {
			sendErr = status.Error(codes.Unavailable, "send failed")
		}
		data = data[1:]
	}
	for _, b := range data {
		eos, obs := b&8 != 0, b&16 != 0
		var m *extprocv3.ProcessingRequest
		switch b % 8 {
		case 0:
			m = reqHeaders(obs)
			if b&32 != 0 {
				m.Attributes = nil
			}
		case 1:
			m = reqBody(obs)
		case 2:
			m = reqTrailers(obs)
		case 3:
			m = respHeaders(eos, obs)
		case 4, 5:
			m = respBody(eos, obs)
		case 6:
			m = respTrailers(obs)
		default:
			m = &extprocv3.ProcessingRequest{ObservabilityMode: obs}
		}
		msgs = append(msgs, m)
	}
	return msgs, final, sendErr
}

// FuzzProcess feeds arbitrary ProcessingRequest sequences to the real
// handler: it must never panic, never leak or double-count a request, and
// answer each message it answers with the matching type.
func FuzzProcess(f *testing.F) {
	f.Add([]byte{0, 0, 3, 4, 12})    // SSE, EOF
	f.Add([]byte{1, 16, 19, 20})     // observe, reset mid-body
	f.Add([]byte{2, 0, 0, 1, 2, 11}) // duplicate headers, bodiless end
	f.Add([]byte{8, 0, 3})           // send fails
	f.Add([]byte{0, 3, 12, 0, 7})    // no start, then headers, then invalid
	f.Add([]byte{3, 32, 6})          // no attributes, trailers
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, final, sendErr := decodeScript(data)
		tr := NewTracker(TrackerOptions{})
		m := newMetrics()
		srv := NewServer(tr, ServerOptions{Metrics: m})
		st := &scriptStream{msgs: msgs, final: final, sendErr: sendErr}
		_ = srv.Process(st)
		started := checkDrained(t, tr)
		if started > 1 {
			t.Fatalf("one stream started %d requests", started)
		}
		var ends float64
		for _, c := range m.ends {
			ends += testutil.ToFloat64(c)
		}
		if ends != float64(started) {
			t.Fatalf("%v ends counted for %d starts", ends, started)
		}
		var noStart float64
		for _, c := range m.noStart {
			noStart += testutil.ToFloat64(c)
		}
		if noStart+float64(started) != 1 {
			t.Fatalf("a stream must count one start or one stream without request_headers: %d starts, %v without", started, noStart)
		}
		consumed := msgs[:len(msgs)-len(st.msgs)]
		var expect []*extprocv3.ProcessingRequest
		for _, msg := range consumed {
			if msg.GetRequest() != nil && !msg.GetObservabilityMode() {
				expect = append(expect, msg)
			}
		}
		if len(st.sent) > len(expect) {
			t.Fatalf("%d replies for %d answerable messages", len(st.sent), len(expect))
		}
		for i, r := range st.sent {
			if !replyMatches(expect[i], r) {
				t.Fatalf("reply %d has the wrong type", i)
			}
		}
	})
}
