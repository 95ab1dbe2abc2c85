package logevery

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGateLetsOneLineThroughPerInterval(t *testing.T) {
	g := &Gate{}
	t0 := time.Unix(1_800_000_000, 0)
	if n, ok := g.Allow(t0, time.Minute); !ok || n != 1 {
		t.Fatalf("first event: n %d ok %v, want logged with 1", n, ok)
	}
	for i := range 4 {
		if _, ok := g.Allow(t0.Add(time.Duration(i+1)*time.Second), time.Minute); ok {
			t.Fatal("a second line within the interval")
		}
	}
	if n, ok := g.Allow(t0.Add(time.Minute), time.Minute); !ok || n != 5 {
		t.Fatalf("after the interval: n %d ok %v, want logged counting 5", n, ok)
	}
	if _, ok := g.Allow(t0.Add(time.Minute-time.Second), time.Minute); ok {
		t.Fatal("an event stamped before the last line was let through")
	}
}

// Raced, the counts of the lines let through and the events still held
// back add up to every event, and one line at most gets through.
func TestGateCountsEveryEventUnderConcurrency(t *testing.T) {
	g := &Gate{}
	now := time.Now()
	var logged, counted atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 100 {
				if n, ok := g.Allow(now, time.Hour); ok {
					logged.Add(1)
					counted.Add(n)
				}
			}
		})
	}
	wg.Wait()
	if logged.Load() != 1 || counted.Load()+g.since.Load() != 6400 {
		t.Fatalf("%d lines counting %d, %d held back; want 1 line and 6,400 events in all", logged.Load(), counted.Load(), g.since.Load())
	}
}
