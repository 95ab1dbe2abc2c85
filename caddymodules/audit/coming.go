package audit

import (
	"sync"
	"sync/atomic"
)

// coming counts the rows announced to the writer and not queued yet: one
// for every audited request between its start and the moment its row
// joins a chain. A chain that lingers for a larger group commit stops as
// soon as that count is zero, because nothing could join it before the
// timer fires: without this, under a closed loop (every client waiting
// for its answer) the CPUs sit idle for the rest of the linger.
type coming struct {
	n        atomic.Int64
	watchers atomic.Int32 // chains lingering now
	used     atomic.Bool  // some caller announces its rows

	mu sync.Mutex
	ch chan struct{} // closed, and replaced, each time n falls to zero while watched
}

func newComing() *coming { return &coming{ch: make(chan struct{})} }

// announce counts a row to come.
func (c *coming) announce() {
	c.used.Store(true)
	c.n.Add(1)
}

// arrived uncounts a row announced: it is queued, or will not come.
func (c *coming) arrived() {
	if c.n.Add(-1) == 0 && c.watchers.Load() > 0 {
		c.mu.Lock()
		close(c.ch)
		c.ch = make(chan struct{})
		c.mu.Unlock()
	}
}

// watch starts a linger. It returns a channel closed when no announced
// row is left to come, and none = true if that is already so (and rows
// are announced at all: a writer whose callers never announce lingers for
// its timer alone). The caller must call unwatch when it stops waiting.
//
// Order matters: the watcher is counted before the channel and the count
// are read, and arrived decrements before it reads the watchers, so
// either this sees zero or arrived sees the watcher and closes the
// channel read here (or a later one, after closing this one).
func (c *coming) watch() (ch <-chan struct{}, none bool) {
	c.watchers.Add(1)
	c.mu.Lock()
	ch = c.ch
	c.mu.Unlock()
	return ch, c.used.Load() && c.n.Load() <= 0
}

func (c *coming) unwatch() { c.watchers.Add(-1) }
