package audit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

func call(t *testing.T, method, url, key, body string) *http.Response {
	t.Helper()
	resp, err := tryCall(method, url, key, body)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// tryCall is call for goroutines other than the test's, which must not
// call t.Fatal.
func tryCall(method, url, key, body string) (*http.Response, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("User-Agent", "audit-test/1.0")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

type auditRow struct {
	customer, key, action, result, reason, path, ua, ip, resourceType, resourceID, metadata string
	status                                                                                  int
}

func rowFor(t *testing.T, pg *testenv.PG, requestID string) auditRow {
	t.Helper()
	var r auditRow
	err := pg.Owner.QueryRow(context.Background(), `SELECT coalesce(customer_id::text,''), coalesce(key_id::text,''), action, result,
		coalesce(metadata->>'reason',''), path, user_agent, host(source_ip), coalesce(resource_type,''), coalesce(resource_id,''), metadata::text, status_code
		FROM api_audit_log WHERE request_id = $1`, requestID).Scan(&r.customer, &r.key, &r.action, &r.result, &r.reason, &r.path, &r.ua, &r.ip,
		&r.resourceType, &r.resourceID, &r.metadata, &r.status)
	if err != nil {
		t.Fatalf("no audit row for request %s: %v", requestID, err)
	}
	return r
}

func TestEveryAuthenticatedCallAndFailureIsAudited(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	ch := testenv.ClickHouse(t)
	env["GUARDIAN_CLICKHOUSE_DATABASE"] = ch.Database
	stack := testenv.StartStack(t, env)
	read := c.AccountKey(t, "read")
	collector := c.CollectorKey(t, c.ServerID)

	ok := call(t, "GET", stack.URL+"/api/v1/whoami", read, "")
	r := rowFor(t, pg, ok.Header.Get("Request-Id"))
	if r.customer != c.ID || r.key == "" || r.action != "read" || r.result != "success" || r.status != 200 || r.ua != "audit-test/1.0" || r.ip != "127.0.0.1" || r.path != "/api/v1/whoami" {
		t.Errorf("authenticated call: %+v", r)
	}

	bad := call(t, "GET", stack.URL+"/api/v1/whoami", testenv.Corrupt(read), "")
	r = rowFor(t, pg, bad.Header.Get("Request-Id"))
	if bad.StatusCode != 401 || r.customer != "" || r.action != "auth_failed" || r.result != "denied" || r.reason != "malformed" || r.status != 401 {
		t.Errorf("failed authentication: %d %+v", bad.StatusCode, r)
	}

	scope := call(t, "GET", stack.URL+"/api/v1/whoami", collector, "")
	r = rowFor(t, pg, scope.Header.Get("Request-Id"))
	if scope.StatusCode != 403 || r.customer != c.ID || r.result != "denied" || r.reason != "kind_not_allowed" {
		t.Errorf("refused for scope: %d %+v", scope.StatusCode, r)
	}

	snap := `{"collector_version":"0.9.4","timestamp":"` + time.Now().UTC().Format(time.RFC3339) + `","system":{"hostname":"db1"}}`
	ing := call(t, "POST", stack.URL+"/api/v1/ingest", collector, snap)
	if ing.StatusCode != 200 || ing.Header.Get("Guardian-Audit") != "" {
		t.Fatalf("ingest: %d, annotation leaked: %q", ing.StatusCode, ing.Header.Get("Guardian-Audit"))
	}
	r = rowFor(t, pg, ing.Header.Get("Request-Id"))
	if r.action != "create" || r.resourceType != "snapshot" || r.resourceID != c.ServerID || !strings.Contains(r.metadata, `"collector_version": "0.9.4"`) {
		t.Errorf("function's annotation: %+v", r)
	}

	anon := call(t, "GET", stack.URL+"/healthz", "", "")
	if anon.Header.Get("Request-Id") != "" {
		t.Error("an unauthenticated public route was audited")
	}

	// A client revoking a key by the key itself, not its id: the path
	// holds the secret.
	byKey := call(t, "DELETE", stack.URL+"/api/v1/keys/"+read, read, "")
	if r = rowFor(t, pg, byKey.Header.Get("Request-Id")); !strings.HasPrefix(r.path, "/api/v1/keys/[redacted]") || strings.Contains(r.path, read[14:40]) {
		t.Errorf("a key in the path: %d %+v", byKey.StatusCode, r)
	}

	// Nothing secret in any row.
	var dump string
	if err := pg.Owner.QueryRow(context.Background(), "SELECT string_agg(t::text, E'\\n') FROM api_audit_log t").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{read, read[14:40], collector[13:40], env["GUARDIAN_KEY_PEPPER"]} {
		if strings.Contains(dump, secret) {
			t.Fatalf("audit rows contain key material:\n%s", dump)
		}
	}
}

func TestPostgresRestartUnderLoadLosesNoRow(t *testing.T) {
	t.Parallel()
	appDSN, owner, dir := privatePostgres(t)
	c := testenv.NewCustomer(t, owner, nil, nil)
	env := testenv.StackEnv(t)
	env["GUARDIAN_PG_APP_DSN"] = appDSN
	creds, err := testenv.ReadEnvFile(filepath.Join(dir, "servers.env"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range testenv.FunctionDSNs(t, creds, appDSN) {
		env[k] = v
	}
	c.Pepper, c.Secret = []byte(env["GUARDIAN_KEY_PEPPER"]), []byte(env["GUARDIAN_SESSION_SECRET"])
	key := c.AccountKey(t, "read")
	stack := testenv.StartStack(t, env)
	if resp := call(t, "GET", stack.URL+"/api/v1/whoami", key, ""); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d", resp.StatusCode) // caches the key: auth keeps serving while PostgreSQL is down
	}

	var sent, answered atomic.Int64
	statuses := sync.Map{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				resp, err := tryCall("GET", stack.URL+"/api/v1/whoami", key, "")
				if err != nil {
					t.Errorf("whoami under load: %v", err)
					return
				}
				answered.Add(1)
				n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				time.Sleep(3 * time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := testenv.Stop(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := testenv.Start(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	want := answered.Load() + 1 // and the warm-up
	owner.Reset()
	deadline := time.Now().Add(30 * time.Second)
	var rows, distinct int64
	for {
		// Distinct requests too: one row lost and another written twice
		// would leave the count right.
		if err := owner.QueryRow(context.Background(), "SELECT count(*), count(DISTINCT request_id) FROM api_audit_log").Scan(&rows, &distinct); err == nil &&
			rows == want && distinct == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d audit rows (%d requests) for %d answered requests", rows, distinct, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var summary []string
	statuses.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%d:%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("sent %d, answered by status %v, audit rows expected %d, found %d", sent.Load(), summary, want, rows)
}

// A path PostgreSQL's text type cannot hold (a NUL byte, bytes that are
// not UTF-8) is stored cleaned, not refused: such a row must neither lose
// the request nor fail the group commit it shares with other requests.
func TestPathsTextCannotHoldAreAuditedCleaned(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	read := c.AccountKey(t, "read")
	for _, tc := range []struct{ path, stored string }{
		{"/api/v1/keys/%00x", "/api/v1/keys/\uFFFDx"},
		{"/api/v1/keys/%ff%fe", "/api/v1/keys/\uFFFD"},
		{"/api/v1/servers/%e2%82", "/api/v1/servers/\uFFFD"},
	} {
		resp := call(t, "GET", stack.URL+tc.path, read, "")
		if resp.StatusCode >= 500 {
			t.Fatalf("%s: %d", tc.path, resp.StatusCode)
		}
		if r := rowFor(t, pg, resp.Header.Get("Request-Id")); r.path != tc.stored {
			t.Errorf("%s stored as %q, want %q", tc.path, r.path, tc.stored)
		}
	}
	ok := call(t, "GET", stack.URL+"/api/v1/whoami", read, "")
	if r := rowFor(t, pg, ok.Header.Get("Request-Id")); r.status != 200 {
		t.Errorf("the next row: %+v", r)
	}
}

// Once an address is out of ip-tier tokens, its refusals without a
// credential are counted, not each written: the failure that blocked it
// has its row (rate_limited), and the rest, answered at the edge's speed,
// would otherwise grow a log that keeps rows without an account forever.
// A request with an identity from the same address is still written.
func TestABlockedAddressesRefusalsAreCountedNotWritten(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	// Until the edge listens for revocations, a cached key is looked up
	// again after a second, which the block would refuse.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stack.Log(), "auth revocation listener up"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the edge's revocation listener never came up")
		}
	}
	read := c.AccountKey(t, "read")
	if resp := call(t, "GET", stack.URL+"/api/v1/whoami", read, ""); resp.StatusCode != 200 {
		t.Fatalf("valid key: %d", resp.StatusCode) // cached from here on
	}
	garbage := "gmk_acct_live_garbage"
	var fresh []string // valid, and never seen by the edge
	for range 10 {
		fresh = append(fresh, c.AccountKey(t, "read"))
	}
	var first *http.Response
	for range 200 {
		resp := call(t, "GET", stack.URL+"/api/v1/whoami", garbage, "")
		if resp.StatusCode == http.StatusTooManyRequests {
			first = resp
			break
		}
	}
	if first == nil {
		t.Fatal("the address was never blocked")
	}
	if r := rowFor(t, pg, first.Header.Get("Request-Id")); r.action != "auth_failed" || r.status != 429 || !strings.Contains(r.metadata, `"rate_limited": true`) {
		t.Fatalf("the refusal that blocked the address: %+v", r)
	}

	// The block lasts until 16 tokens are back (1.6 s): requests that
	// come after it on a loaded machine are rightly checked and written,
	// so most, not all, of these must be folded. Each kind of credential
	// is refused on its own path: none and a malformed key after their
	// check, a fresh valid key unchecked (not looked up).
	folded := map[string]int{} // by credential sent
	for i := range 30 {
		var key, kind string
		switch i % 3 {
		case 0:
			key, kind = "", "none"
		case 1:
			key, kind = garbage, "malformed"
		case 2:
			key, kind = fresh[i/3], "unchecked"
		}
		resp := call(t, "GET", stack.URL+"/api/v1/whoami", key, "")
		if resp.StatusCode == http.StatusTooManyRequests {
			var n int
			if err := pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE request_id = $1", resp.Header.Get("Request-Id")).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				folded[kind]++
			}
		}
	}
	if folded["none"] < 7 || folded["malformed"] < 7 || folded["unchecked"] < 7 {
		t.Fatalf("refusals from a blocked address folded, of 10 each: %v", folded)
	}
	if m, want := metricValue(stack.Metrics(t), "guardian_audit_folded_refusals_total"), folded["none"]+folded["malformed"]+folded["unchecked"]; m < float64(want) {
		t.Fatalf("guardian_audit_folded_refusals_total = %v, want at least %d", m, want)
	}

	// A known key from the blocked address is served, and written.
	ok := call(t, "GET", stack.URL+"/api/v1/whoami", read, "")
	if r := rowFor(t, pg, ok.Header.Get("Request-Id")); ok.StatusCode != 200 || r.customer != c.ID || r.status != 200 {
		t.Fatalf("a cached key from a blocked address: %d %+v", ok.StatusCode, r)
	}
}

// metricValue is the value of an unlabelled series in Prometheus's text
// format, or -1 when it is absent.
func metricValue(text, name string) float64 {
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(strings.TrimSpace(v), &f); err == nil {
				return f
			}
		}
	}
	return -1
}
