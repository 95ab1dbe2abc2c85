// Package floods sends the full edge (the repository's Caddyfile, real
// functions, real servers) the floods an internet-facing service meets,
// and checks the defence holds while legitimate traffic is still served:
//
//   - credential stuffing at /auth/login from one address: the per-IP
//     bucket (100, 10/s) bounds how many attempts reach bcrypt; the rest
//     get 429 with Retry-After; /healthz and keyed API calls stay 200;
//   - random keys: malformed ones (bad checksum) cost no database query
//     at all; well-formed unknown ones cost at most one lookup each until
//     the address's failure bucket is empty, then none;
//   - slowloris: a client that never finishes its headers is cut off by
//     the read_header timeout and does not hold up others;
//   - oversized headers (431) and bodies (413) are refused.
//
// Each test prints what it sent and how it was answered.
package floods

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// tally counts answers by status.
type tally struct {
	mu sync.Mutex
	by map[int]int
}

func (t *tally) add(status int) {
	t.mu.Lock()
	if t.by == nil {
		t.by = map[int]int{}
	}
	t.by[status]++
	t.mu.Unlock()
}

func (t *tally) get(status int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.by[status]
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprint(t.by)
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func send(ctx context.Context, method, url, body string, header map[string]string) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, nil
}

// probe sends GET path with header every 50 ms until stop, and tallies the
// answers: what legitimate traffic sees during a flood.
func probe(ctx context.Context, url string, header map[string]string, into *tally, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		st, _, err := send(ctx, "GET", url, "", header)
		if err != nil {
			st = -1
		}
		into.add(st)
	}
}

func TestCredentialStuffingIsHeldToTheAddressBucket(t *testing.T) {
	t.Parallel()
	env, c, _ := testenv.EdgeEnv(t)
	// The flood comes from one address, legitimate clients from another
	// (both forwarded by a trusted proxy, as behind Cloudflare).
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	c.Password(t, "correct horse battery staple 9")
	s := testenv.StartStack(t, env)
	key := c.AccountKey(t, "read")
	ctx := context.Background()
	attacker := map[string]string{"Cf-Connecting-Ip": "198.51.100.9"}

	var flood, health, api tally
	stop := make(chan struct{})
	var probes sync.WaitGroup
	probes.Add(2)
	go func() {
		defer probes.Done()
		probe(ctx, s.URL+"/healthz", map[string]string{"Cf-Connecting-Ip": "203.0.113.5"}, &health, stop)
	}()
	go func() {
		defer probes.Done()
		probe(ctx, s.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + key, "Cf-Connecting-Ip": "203.0.113.5"}, &api, stop)
	}()

	// Every attempt at once, as a stuffing tool does: it does not wait for
	// answers, so the bucket, not bcrypt's pace, is what stops it.
	const attempts, workers = 300, 300
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > attempts {
					return
				}
				body := fmt.Sprintf(`{"email":"victim%d@example.com","password":"Winter2026!-%d"}`, i, i)
				st, h, err := send(ctx, "POST", s.URL+"/auth/login", body, attacker)
				if err != nil {
					st = -1
				} else if st == http.StatusTooManyRequests && h.Get("Retry-After") == "" {
					st = -429 // a refusal without Retry-After
				}
				flood.add(st)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	probes.Wait()
	t.Logf("stuffing: %d attempts from one address in %s, answered %s; /healthz %s; keyed whoami %s", attempts, elapsed.Round(time.Millisecond), flood.String(), health.String(), api.String())

	// What passed the bucket: at most its capacity plus what it refilled.
	passed := attempts - flood.get(http.StatusTooManyRequests)
	allowance := 100 + int(10*elapsed.Seconds()) + 2
	if passed > allowance {
		t.Errorf("%d attempts reached sign-in; the per-IP bucket allows %d in %s", passed, allowance, elapsed)
	}
	if flood.get(http.StatusTooManyRequests) == 0 {
		t.Error("no attempt was refused with 429")
	}
	for st := range flood.by {
		switch st {
		case http.StatusUnauthorized, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		default:
			t.Errorf("flood answered %d (%d times)", st, flood.by[st])
		}
	}
	if health.get(200) == 0 || len(health.by) != 1 {
		t.Errorf("/healthz during the flood: %s", health.String())
	}
	if api.get(200) == 0 || len(api.by) != 1 {
		t.Errorf("keyed API calls during the flood: %s", api.String())
	}
}

// keyLookups returns how many index scans found api_keys by key hash: the
// edge's key lookups in this test's database.
func keyLookups(t *testing.T, pg *testenv.PG) int64 {
	t.Helper()
	var n int64
	if err := pg.Owner.QueryRow(context.Background(), `SELECT coalesce(sum(idx_scan), 0)::bigint FROM pg_stat_user_indexes
		WHERE relname = 'api_keys' AND indexrelname LIKE '%key_hash%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// settledLookups waits until the statistics have not moved for 11 s:
// PostgreSQL 15 flushes an idle backend's counters within 10 s
// (PGSTAT_IDLE_INTERVAL), so by then every lookup made is counted.
func settledLookups(t *testing.T, pg *testenv.PG) int64 {
	t.Helper()
	prev, still := keyLookups(t, pg), 0
	for range 60 {
		time.Sleep(time.Second)
		cur := keyLookups(t, pg)
		if cur != prev {
			prev, still = cur, 0
			continue
		}
		if still++; still >= 11 {
			return cur
		}
	}
	t.Fatal("key lookup statistics did not settle within 60 s")
	return 0
}

func TestRandomKeyFloodCostsNoLookupPerGarbageKey(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	s := testenv.StartStack(t, env)
	key := c.AccountKey(t, "read")
	ctx := context.Background()
	// Warm the edge: one real lookup, cached afterwards.
	if st, _, err := send(ctx, "GET", s.URL+"/api/v1/whoami", "", map[string]string{"Authorization": "Bearer " + key}); err != nil || st != 200 {
		t.Fatalf("whoami: %d %v", st, err)
	}
	base := settledLookups(t, pg)

	// 1. Malformed keys (a checksum that does not hold) from many
	// addresses: refused without any lookup.
	var malformed tally
	for i := range 400 {
		k, err := apikey.Generate(apikey.Account)
		if err != nil {
			t.Fatal(err)
		}
		st, _, err := send(ctx, "GET", s.URL+"/api/v1/whoami", "", map[string]string{
			"Authorization": "Bearer " + testenv.Corrupt(k), "Cf-Connecting-Ip": fmt.Sprintf("203.0.113.%d", i%200)})
		if err != nil {
			st = -1
		}
		malformed.add(st)
	}
	afterMalformed := settledLookups(t, pg)
	t.Logf("malformed keys: 400 sent from 200 addresses, answered %s, key lookups %d", malformed.String(), afterMalformed-base)
	if afterMalformed != base {
		t.Errorf("malformed keys cost %d key lookups, want 0", afterMalformed-base)
	}
	if malformed.get(401)+malformed.get(429) != 400 {
		t.Errorf("malformed keys answered %s", malformed.String())
	}

	// 2. Well-formed unknown keys from one address: each costs one lookup
	// until the address's failure bucket is empty, then none: lookups stay
	// within what the bucket lets through (capacity plus refill).
	var unknown tally
	const sent = 250
	start := time.Now()
	for range sent {
		k, err := apikey.Generate(apikey.Account)
		if err != nil {
			t.Fatal(err)
		}
		st, _, err := send(ctx, "GET", s.URL+"/api/v1/whoami", "", map[string]string{
			"Authorization": "Bearer " + k, "Cf-Connecting-Ip": "198.51.100.77"})
		if err != nil {
			st = -1
		}
		unknown.add(st)
	}
	elapsed := time.Since(start)
	lookups := settledLookups(t, pg) - afterMalformed
	t.Logf("unknown well-formed keys: %d sent from one address, answered %s, key lookups %d", sent, unknown.String(), lookups)
	if unknown.get(429) == 0 {
		t.Errorf("unknown keys were never rate limited: %s", unknown.String())
	}
	// A lookup is charged after it is made, so besides the tokens taken
	// (capacity plus refill) a lookup can meet an empty bucket: it is then
	// answered 429 and the address is blocked until a token is back, so at
	// most one such lookup per refilled token.
	if allowance := int64(100 + 2*10*elapsed.Seconds() + 2); lookups > allowance {
		t.Errorf("%d lookups from one address in %s; its failure bucket allows %d", lookups, elapsed, allowance)
	}
	// The counter moves with lookups (part 1's 0 is not a counter that
	// never moves): the bucket's 100 tokens were each spent on one.
	if lookups < 100 {
		t.Errorf("%d lookups counted for %d unknown keys answered %s: the count does not see lookups", lookups, sent, unknown.String())
	}
}

func TestSlowClientsAreCutOffAndDoNotBlockOthers(t *testing.T) {
	t.Parallel()
	env, _, _ := testenv.EdgeEnv(t)
	s := testenv.StartStack(t, env)
	addr := strings.TrimPrefix(s.URL, "http://")

	// Twenty clients that send a request line and then a header byte now
	// and then, never the blank line.
	var conns []net.Conn
	for range 20 {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, cn)
		fmt.Fprintf(cn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	}
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			for _, cn := range conns {
				_, _ = cn.Write([]byte("a"))
			}
		}
	}()
	defer close(stop)

	// Others are served meanwhile.
	for range 10 {
		if st, _, err := send(context.Background(), "GET", s.URL+"/healthz", "", nil); err != nil || st != 200 {
			t.Fatalf("healthz beside slow clients: %d %v", st, err)
		}
	}
	// Each slow client is cut off by read_header (10 s): its connection
	// ends (an error answer or a close) within a bounded wait.
	cut := 0
	began := time.Now()
	for _, cn := range conns {
		_ = cn.SetReadDeadline(time.Now().Add(40 * time.Second))
		r := bufio.NewReader(cn)
		_, err := r.ReadByte()
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		var ne net.Error
		if err == nil || !(errorAs(err, &ne) && ne.Timeout()) {
			cut++
		}
	}
	t.Logf("slowloris: 20 slow clients, %d cut off by the server (all within %s of the first check), 10/10 other requests answered", cut, time.Since(began).Round(time.Second))
	if cut != len(conns) {
		t.Fatalf("%d of %d slow clients were still connected after 40 s", len(conns)-cut, len(conns))
	}
}

func errorAs(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

func TestOversizedHeadersAndBodiesAreRefused(t *testing.T) {
	t.Parallel()
	env, c, _ := testenv.EdgeEnv(t)
	s := testenv.StartStack(t, env)
	ctx := context.Background()
	collector := c.CollectorKey(t, c.ServerID)

	if st, _, err := send(ctx, "GET", s.URL+"/healthz", "", map[string]string{"X-Big": strings.Repeat("a", 64<<10)}); err != nil || st != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d %v", st, err)
	}
	big := `{"timestamp":"2026-11-28T00:00:00Z","pad":"` + strings.Repeat("x", 600<<10) + `"}`
	if st, _, err := send(ctx, "POST", s.URL+"/api/v1/ingest", big, map[string]string{"Authorization": "Bearer " + collector}); err != nil || st != http.StatusRequestEntityTooLarge {
		t.Errorf("600 KiB snapshot: %d %v", st, err)
	}
	login := `{"email":"a@example.com","password":"` + strings.Repeat("p", 9<<10) + `"}`
	if st, _, err := send(ctx, "POST", s.URL+"/auth/login", login, nil); err != nil || st != http.StatusRequestEntityTooLarge {
		t.Errorf("9 KiB sign-in form: %d %v", st, err)
	}
	// And the edge still answers normally afterwards.
	if st, _, err := send(ctx, "GET", s.URL+"/healthz", "", nil); err != nil || st != 200 {
		t.Errorf("healthz after: %d %v", st, err)
	}
}

// TestPageViewsDoNotSpendTheSignInBudget: the sign-in page takes from a
// page bucket of its own. Sharing the address's brute-force bucket, ten
// views a second from an office behind one address emptied it, and the
// office's sign-ins and uncached keys were then refused 429.
func TestPageViewsDoNotSpendTheSignInBudget(t *testing.T) {
	t.Parallel()
	env, c, _ := testenv.EdgeEnv(t)
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	email := c.Password(t, "correct horse battery staple 9")
	s := testenv.StartStack(t, env)
	ctx := context.Background()
	office := map[string]string{"Cf-Connecting-Ip": "198.51.100.23"}
	var views tally
	for range 150 {
		st, _, err := send(ctx, "GET", s.URL+"/login", "", office)
		if err != nil {
			st = -1
		}
		views.add(st)
	}
	if views.get(200) != 150 {
		t.Errorf("150 views of the sign-in page answered %s", views.String())
	}
	st, _, err := send(ctx, "POST", s.URL+"/auth/login", `{"email":"`+email+`","password":"wrong password, surely"}`, office)
	if err != nil || st != http.StatusUnauthorized {
		t.Errorf("a sign-in after the views: %d %v, want 401 (the budget unspent)", st, err)
	}
	// The page bucket is bounded too. Views sent eight at a time outrun
	// its refill (30 a second); one after another, on a busy machine,
	// they did not, and none was refused. They stop at the first refusal
	// (or 3,000 views).
	var sent atomic.Int64
	var refused atomic.Bool
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for !refused.Load() && sent.Add(1) <= 3000 {
				st, _, err := send(ctx, "GET", s.URL+"/login", "", office)
				if err != nil {
					st = -1
				}
				views.add(st)
				if st == http.StatusTooManyRequests {
					refused.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if views.get(429) == 0 {
		t.Errorf("%d views, eight at a time, were never limited: %s", views.get(200), views.String())
	}
}
