package main

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/inflight-dev/inflight/extproc"
)

// What each bounded resource costs at most, measured on the real binary
// (README, Security → Limits, has the measurements and the commands).
const (
	// baseBytes: the process with nothing open (17 MiB measured) plus
	// margin.
	baseBytes = 20 << 20
	// bytesPerStream: one open stream — its handler goroutine's stack
	// (8.2 KiB) and grpc-go's per-stream state (3.4 KiB), measured at
	// 20,000 streams, rounded up.
	bytesPerStream = 12800
	// bytesPerTarget: a record (0.6 KiB) plus its share of the admin reads
	// that may run at once: 2 /metrics scrapes (5.2 KiB each held at the
	// peak) and 4 snapshots (0.7 KiB each).
	bytesPerTarget = 14 << 10
	// bytesPerConn, bytesPerTLSConn: one idle gRPC connection, plaintext
	// and with this process terminating TLS.
	bytesPerConn    = 25 << 10
	bytesPerTLSConn = 62 << 10
)

// memoryNeed is the most memory the bounds allow the process to hold.
func (o *Options) memoryNeed() int64 {
	conn := int64(bytesPerConn)
	if o.CallerIdentity == identityMTLS {
		conn = bytesPerTLSConn
	}
	streams := int64(o.MaxOpenStreams) + extproc.OverLimitReaders
	return baseBytes + streams*bytesPerStream + int64(o.MaxTargets)*bytesPerTarget + int64(o.MaxConnections)*conn
}

// memoryBudget is the part of --memory-limit the bounds may use: 7/8 of it,
// the Go heap limit set when GOMEMLIMIT is not (the rest is headroom for
// the garbage collector and what the runtime does not count).
func memoryBudget(limit int64) int64 { return limit / 8 * 7 }

// defaultMemoryLimit is $MEMORY_LIMIT (the container's limits.memory, as the
// downward API gives it), else the shipped Deployment's 256 MiB.
func defaultMemoryLimit() string {
	if v := os.Getenv("MEMORY_LIMIT"); v != "" {
		return v
	}
	return "256Mi"
}

// parseMemory reads a Kubernetes quantity ("256Mi", "268435456").
func parseMemory(s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, err
	}
	v, ok := q.AsInt64()
	if !ok || v <= 0 {
		return 0, fmt.Errorf("not a positive number of bytes")
	}
	return v, nil
}
