package harness

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// NewClient returns an HTTP client for loopback load: no proxy, enough idle
// connections per host for conc requests in flight, and a bound on every
// request.
func NewClient(conc int) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        2 * conc,
			MaxIdleConnsPerHost: 2 * conc,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
}

// UnixClient talks HTTP to the unix socket at path (Caddy's admin).
func UnixClient(path string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}
}

// Target is the request a load generator sends: GET URL with Header.
type Target struct {
	URL    string
	Header http.Header
}

// Get sends GET url and returns the status and the whole body.
func Get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	status, _, body, err := Target{URL: url}.Do(ctx, c)
	return status, body, err
}

// Do sends the target's request once and returns the status, the response
// header and the whole body (up to 1 MiB).
func (t Target) Do(ctx context.Context, c *http.Client) (int, http.Header, []byte, error) {
	req, err := t.request(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, body, err
}

func (t Target) request(ctx context.Context) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range t.Header {
		req.Header[k] = v
	}
	return req, nil
}

// Hit sends GET url, reads the answer to the end and reports whether it
// was a complete 200.
func Hit(ctx context.Context, c *http.Client, url string) bool {
	return Target{URL: url}.Hit(ctx, c)
}

// Hit sends the target's request, reads the answer to the end and reports
// whether it was a complete 200.
func (t Target) Hit(ctx context.Context, c *http.Client) bool {
	req, err := t.request(ctx)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode == http.StatusOK
}

// Round is the outcome of one load run against one target.
type Round struct {
	OK, Errors int
	Elapsed    time.Duration
	// Latencies of every request sent, errors included, from the moment
	// the request was handed to the client to the last byte of the answer.
	Latencies []time.Duration
	// Open loop only: the rate asked for, the requests the schedule
	// called for, those not sent because MaxInFlight requests were
	// already outstanding (the system under test fell behind), and for
	// each request sent how late it left against its schedule.
	Rate      float64
	Scheduled int
	Dropped   int
	Lags      []time.Duration
}

// RPS is the rate of successful requests over the round.
func (r Round) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// ClosedLoop runs conc workers against t for d, each sending its next
// request as soon as it has read the previous answer.
func ClosedLoop(ctx context.Context, c *http.Client, t Target, conc int, d time.Duration) Round {
	perWorker := make([]Round, conc)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := range perWorker {
		wg.Add(1)
		go func() {
			defer wg.Done()
			perWorker[i] = closedWorker(ctx, c, t, deadline)
		}()
	}
	wg.Wait()
	total := Round{Elapsed: time.Since(start)}
	for _, w := range perWorker {
		total.OK += w.OK
		total.Errors += w.Errors
		total.Latencies = append(total.Latencies, w.Latencies...)
	}
	return total
}

func closedWorker(ctx context.Context, c *http.Client, t Target, deadline time.Time) Round {
	r := Round{Latencies: make([]time.Duration, 0, 4096)}
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(deadline) {
			break
		}
		ok := t.Hit(ctx, c)
		r.Latencies = append(r.Latencies, time.Since(t0))
		if ok {
			r.OK++
		} else if ctx.Err() == nil {
			r.Errors++
		}
	}
	return r
}

// OpenLoop sends requests to t at rate per second for d, on a fixed
// schedule (request i is due at start + i/rate) whatever the answers do:
// a slow answer does not delay the next request, so queueing in the
// system under test shows in the latencies. At most maxInFlight requests
// are outstanding; a request due while that many are is not sent and
// counts as Dropped. Timers here fire about every millisecond, so requests
// leave in small bursts of those due; Lags records how late each left.
func OpenLoop(ctx context.Context, c *http.Client, t Target, rate float64, d time.Duration, maxInFlight int) Round {
	n := int(math.Round(d.Seconds() * rate))
	type sample struct {
		lat, lag time.Duration
		state    uint8 // 0 not sent, 1 ok, 2 error, 3 dropped
	}
	samples := make([]sample, n)
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			Sleep(ctx, wait)
			continue
		}
		select {
		case sem <- struct{}{}:
			wg.Add(1)
			go func(s *sample, due time.Time) {
				defer wg.Done()
				defer func() { <-sem }()
				t0 := time.Now()
				ok := t.Hit(ctx, c)
				s.lat, s.lag = time.Since(t0), t0.Sub(due)
				if ok {
					s.state = 1
				} else if ctx.Err() == nil {
					s.state = 2
				}
			}(&samples[i], due)
		default:
			samples[i].state = 3
		}
		i++
	}
	wg.Wait()
	r := Round{Elapsed: time.Since(start), Rate: rate, Scheduled: n,
		Latencies: make([]time.Duration, 0, n), Lags: make([]time.Duration, 0, n)}
	for _, s := range samples {
		switch s.state {
		case 1, 2:
			r.Latencies = append(r.Latencies, s.lat)
			r.Lags = append(r.Lags, s.lag)
			if s.state == 1 {
				r.OK++
			} else {
				r.Errors++
			}
		case 3:
			r.Dropped++
		}
	}
	return r
}

// Percentile returns the nearest-rank q-quantile of sorted, or 0.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Median returns the median of xs, or 0.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// Ms is d in milliseconds, rounded to the microsecond.
func Ms(d time.Duration) float64 { return Round3(float64(d) / float64(time.Millisecond)) }

// Round3 rounds x to three decimals.
func Round3(x float64) float64 { return math.Round(x*1000) / 1000 }
