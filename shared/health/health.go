// Package health checks that Guardian's data stores answer.
package health

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"
)

// Check pings one dependency.
type Check func(ctx context.Context) error

// Result is the outcome of one check. Errors are kept out of it on purpose:
// health is public, and an error text can name internal hosts.
type Result struct {
	Status    string  `json:"status"`
	LatencyMS float64 `json:"latency_ms"`
}

// Report is the outcome of all checks.
type Report struct {
	Checks  map[string]Result
	Failing []string
}

// OK reports whether every check passed.
func (r Report) OK() bool { return len(r.Failing) == 0 }

// Run runs every check concurrently, each bounded by timeout, and calls
// onErr (which may log it) for each failure.
func Run(ctx context.Context, checks map[string]Check, timeout time.Duration, onErr func(name string, err error)) Report {
	var mu sync.Mutex
	var wg sync.WaitGroup
	rep := Report{Checks: make(map[string]Result, len(checks))}
	for name, check := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			err := check(cctx)
			res := Result{Status: "up", LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Status = "down"
				rep.Failing = append(rep.Failing, name)
				if onErr != nil {
					onErr(name, err)
				}
			}
			rep.Checks[name] = res
		}()
	}
	wg.Wait()
	sort.Strings(rep.Failing)
	return rep
}

// Summary names the failing checks in a sentence: "redis is down",
// "postgres and redis are down".
func (r Report) Summary() string {
	switch len(r.Failing) {
	case 0:
		return "all dependencies are up"
	case 1:
		return r.Failing[0] + " is down"
	}
	return strings.Join(r.Failing[:len(r.Failing)-1], ", ") + " and " + r.Failing[len(r.Failing)-1] + " are down"
}
