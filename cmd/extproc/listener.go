package main

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// limitListener accepts at most max connections at once. A connection
// beyond it is closed at once (the caller's Envoy fails open and retries on
// a new connection later) rather than left waiting in the backlog, so the
// memory held per connection (≈ 25 KiB plaintext, ≈ 60 KiB with TLS,
// measured) stays bounded.
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused prometheus.Counter
}

func newLimitListener(l net.Listener, max int, reg prometheus.Registerer) *limitListener {
	ll := &limitListener{Listener: l, max: int64(max), refused: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "inflight_extproc_connections_refused_total",
		Help: "gRPC connections closed at once because --max-connections were open.",
	})}
	reg.MustRegister(ll.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "inflight_extproc_connections",
		Help: "gRPC connections open now (bounded by --max-connections).",
	}, func() float64 { return float64(ll.open.Load()) }))
	return ll
}

// Accept returns the next connection under the limit.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Inc()
			_ = c.Close()
			continue
		}
		return &limitConn{Conn: c, l: l}, nil
	}
}

// limitConn releases its slot once, on the first Close.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
