// Package logevery lets a repeated log line through at most once per
// interval, counting the events it held back: a line per request during
// an outage, or per forged request on a public route, would let anyone
// fill the log.
package logevery

import (
	"sync/atomic"
	"time"

	"github.com/glassmkr/guardian/shared/mono"
)

// Gate lets one line through per interval. The zero value is ready; a
// Gate must not be copied after first use.
type Gate struct {
	last  atomic.Int64 // mono.Nanos of the last line let through
	since atomic.Int64 // events since then
}

// Allow counts one event at now and reports whether its line is to be
// logged, at most one per every; n is then the number of events since the
// last line logged, this one included. Concurrent callers never both get
// ok within every, and no event is counted twice or lost from the counts
// reported.
func (g *Gate) Allow(now time.Time, every time.Duration) (n int64, ok bool) {
	n = g.since.Add(1)
	t := mono.Nanos(now) // a step of the wall clock holds no line back
	last := g.last.Load()
	if t-last < int64(every) || !g.last.CompareAndSwap(last, t) {
		return n, false
	}
	g.since.Add(-n)
	return n, true
}

// Pass moves the gate's last line back, so the next event is let through
// (tests).
func (g *Gate) Pass() { g.last.Store(0) }
