package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/inflight-dev/inflight/extproc"
)

// watchWakes keeps one GET /v1/gates/wake wait open on every extproc
// replica while this replica leads (the replicas are listed again every
// tick) and asks the tick loop for a tick at once when one of them holds
// the first request for a Service with no ready endpoint: a workload at
// zero is woken within a round trip of its first held request, not at the
// next tick. The ticks stay the fallback (an extproc without the endpoint,
// a wait that failed).
func (c *Controller) watchWakes(ctx context.Context) {
	waits := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range waits {
			cancel()
		}
	}()
	tk := c.opt.Clock.NewTicker(c.opt.Tick)
	defer tk.Stop()
	for {
		live := map[string]bool{}
		for _, ep := range c.endpoints() {
			u := gatesURL(ep.URL, c.opt.SnapshotPath) + "/wake"
			live[u] = true
			if waits[u] == nil {
				wctx, cancel := context.WithCancel(ctx)
				waits[u] = cancel
				go c.waitWakes(wctx, u)
			}
		}
		for u, cancel := range waits {
			if !live[u] {
				cancel()
				delete(waits, u)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C():
		}
	}
}

// waitWakes waits on one replica until ctx is done: it reads the replica's
// wake count, then waits for it to grow, asking for a tick each time it
// does. After a failure it tries again a tick later; a count that went
// down (the replica restarted) is taken as the new start.
func (c *Controller) waitWakes(ctx context.Context, url string) {
	var after uint64
	known := false
	for ctx.Err() == nil {
		q := "?wait=0s"
		if known {
			q = fmt.Sprintf("?after=%d", after)
		}
		n, err := c.getWakes(ctx, url+q)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				c.log.Debug("wake wait failed", zap.String("url", url), zap.Error(err))
			}
			known = false
			select {
			case <-ctx.Done():
			case <-c.opt.Clock.After(c.opt.Tick):
			}
		case known && n > after:
			after = n
			select {
			case c.wakeNow <- struct{}{}:
			default: // a tick is already asked for
			}
			// At most ten immediate ticks per tick from one replica.
			select {
			case <-ctx.Done():
			case <-c.opt.Clock.After(c.opt.Tick / 10):
			}
		default:
			after, known = n, true
		}
	}
}

// getWakes reads a replica's wake count (bounded body, bounded time).
func (c *Controller) getWakes(ctx context.Context, url string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, extproc.MaxWakeWait+c.opt.FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.collOpt.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var s extproc.WakeStatus
	if err := json.Unmarshal(body, &s); err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	return s.Wakes, nil
}
