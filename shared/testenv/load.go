package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// LoadRequest is one kind of request in a Load.
type LoadRequest struct {
	// Kind names the request in outcomes and summaries ("key", "ingest").
	Kind   string
	Method string
	Path   string
	Header map[string]string
	// Body returns the body of the n-th request of this kind and a tag
	// recorded with its outcome (e.g. a marker to find it in storage);
	// nil sends no body.
	Body func(n int) (body, tag string)
	// PerSecond is this kind's pace. Default 100.
	PerSecond int
	// Workers send this kind concurrently, each at PerSecond/Workers.
	// Default 4.
	Workers int
}

// Outcome is what became of one request.
type Outcome struct {
	Kind       string
	Tag        string
	Body       string // the body sent
	Start, End time.Time
	// Status is 0 when no answer came (Err says why).
	Status int
	Err    string
	// Code and Detail are the problem+json members of an error answer.
	Code, Detail string
	// RequestID is the Request-Id header: the edge audited the request.
	RequestID string
	// Limited: the answer carried RateLimit-Limit, so the limiter decided
	// with Redis (an answer that failed open carries none).
	Limited    bool
	RetryAfter string
}

// Load is steady background traffic against a stack: several kinds of
// request, each sent by its own workers at a fixed pace until Stop, with
// every answer recorded for the test to judge afterwards. Workers are
// closed-loop: a slow edge lowers the rate instead of piling up requests.
type Load struct {
	url    string
	client *http.Client
	stop   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	outcomes []Outcome
	stopped  bool
}

// NewLoad returns a Load on s that sends nothing until Start; probes
// (Do) may be sent before. It is stopped when t ends.
func NewLoad(t testing.TB, s *Stack) *Load {
	t.Helper()
	l := &Load{
		url: s.URL,
		client: &http.Client{
			Timeout:   45 * time.Second, // above the edge's own bounds (audit 10 s, functions 30 s)
			Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
		},
		stop: make(chan struct{}),
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// Start starts sending reqs, each kind by its own workers, until Stop.
func (l *Load) Start(reqs ...LoadRequest) {
	for _, r := range reqs {
		if r.PerSecond <= 0 {
			r.PerSecond = 100
		}
		if r.Workers <= 0 {
			r.Workers = 4
		}
		interval := time.Duration(r.Workers) * time.Second / time.Duration(r.PerSecond)
		var n int
		var nmu sync.Mutex
		next := func() int {
			nmu.Lock()
			defer nmu.Unlock()
			n++
			return n
		}
		for w := range r.Workers {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				// Stagger the workers so their requests interleave.
				due := time.Now().Add(interval * time.Duration(w) / time.Duration(r.Workers))
				for {
					if d := time.Until(due); d > 0 {
						select {
						case <-l.stop:
							return
						case <-time.After(d):
						}
					} else if d < -time.Second {
						due = time.Now() // far behind (a slow phase): no burst to catch up
					}
					select {
					case <-l.stop:
						return
					default:
					}
					due = due.Add(interval)
					l.record(l.send(r, next()))
				}
			}()
		}
	}
}

func (l *Load) send(r LoadRequest, n int) Outcome {
	var body, tag string
	if r.Body != nil {
		body, tag = r.Body(n)
	}
	return l.do(r.Kind, r.Method, r.Path, body, tag, r.Header)
}

// Do sends one request (a probe beside the load), records its outcome
// with the others and returns it.
func (l *Load) Do(kind, method, path, body, tag string, header map[string]string) Outcome {
	o := l.do(kind, method, path, body, tag, header)
	l.record(o)
	return o
}

func (l *Load) do(kind, method, path, body, tag string, header map[string]string) Outcome {
	o := Outcome{Kind: kind, Tag: tag, Body: body, Start: time.Now()}
	req, err := http.NewRequest(method, l.url+path, strings.NewReader(body))
	if err != nil {
		o.Err, o.End = err.Error(), time.Now()
		return o
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		o.Err, o.End = err.Error(), time.Now()
		return o
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	o.End = time.Now()
	if err != nil {
		o.Err = "reading the answer: " + err.Error()
		return o
	}
	o.Status = resp.StatusCode
	o.RequestID = resp.Header.Get("Request-Id")
	o.Limited = resp.Header.Get("RateLimit-Limit") != ""
	o.RetryAfter = resp.Header.Get("Retry-After")
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		var p struct{ Code, Detail string }
		if json.Unmarshal(b, &p) == nil {
			o.Code, o.Detail = p.Code, p.Detail
		}
	}
	return o
}

func (l *Load) record(o Outcome) {
	l.mu.Lock()
	l.outcomes = append(l.outcomes, o)
	l.mu.Unlock()
}

// Outcomes returns a copy of the outcomes recorded so far.
func (l *Load) Outcomes() []Outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Outcome(nil), l.outcomes...)
}

// Stop stops the workers, waits for their last requests and returns every
// outcome, probes included.
func (l *Load) Stop() []Outcome {
	l.mu.Lock()
	if !l.stopped {
		l.stopped = true
		close(l.stop)
	}
	l.mu.Unlock()
	l.wg.Wait()
	return l.Outcomes()
}

// Tally summarises outcomes by kind and status, e.g.
// "ingest{200:812 503:40} key{200:1620}"; "err" counts requests that got
// no answer.
func Tally(outcomes []Outcome) string {
	counts := map[string]map[string]int{}
	for _, o := range outcomes {
		if counts[o.Kind] == nil {
			counts[o.Kind] = map[string]int{}
		}
		s := "err"
		if o.Status != 0 {
			s = fmt.Sprint(o.Status)
		}
		counts[o.Kind][s]++
	}
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var b strings.Builder
	for i, k := range kinds {
		statuses := make([]string, 0, len(counts[k]))
		for s := range counts[k] {
			statuses = append(statuses, s)
		}
		sort.Strings(statuses)
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "{")
		for j, s := range statuses {
			if j > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s:%d", s, counts[k][s])
		}
		b.WriteByte('}')
	}
	return b.String()
}
