package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

// password is the customer's admin password in scenarios that sign in.
const password = "faults-suite-password-7"

// options shape a scenario's stack.
type options struct {
	// private lists the servers the scenario stops: they are its own.
	// Redis is always its own too (cheap), so that the per-IP buckets of
	// 127.0.0.1 are not shared with the rest of the test run.
	private []string
	// slow lists the servers the stack reaches through a proxy that can
	// add latency (rig.slow).
	slow []string
	// env overrides stack settings.
	env map[string]string
}

// rig is one scenario's stack, its servers, its customer and its load.
type rig struct {
	t     *testing.T
	name  string
	stack *testenv.Stack
	c     *testenv.Customer
	// owner is the owner role on the stack's PostgreSQL database, direct.
	owner *pgxpool.Pool
	// ch reaches the stack's ClickHouse directly; chTable is the
	// snapshots table the stack writes.
	ch      driver.Conn
	chTable string
	dirs    map[string]string           // private servers' folders
	proxies map[string]*toxiproxy.Proxy // latency proxies
	// Credentials the load presents (warmed up, so cached at the edge).
	key, collector, session string
	load                    *testenv.Load
	// noRow lists request ids of audited routes whose requests leave no
	// row by design (anonymous and nothing to say: a failed sign-in).
	noRow map[string]bool
}

func newRig(t *testing.T, name string, o options) *rig {
	t.Helper()
	r := &rig{t: t, name: name, dirs: map[string]string{}, proxies: map[string]*toxiproxy.Proxy{}, noRow: map[string]bool{}}
	ctx := context.Background()
	env := testenv.StackEnv(t)
	private := func(svc string) bool { return slices.Contains(o.private, svc) }
	slow := func(svc string) bool { return slices.Contains(o.slow, svc) }

	// PostgreSQL: the scenario's own server, or its own database on the run's.
	var appDSN string
	pgCreds := testenv.Servers(t, "postgres") // the function roles' passwords
	if private("postgres") {
		pe, dir := testenv.Private(t, "postgres")
		r.dirs["postgres"] = dir
		owner, err := pgxpool.New(ctx, pe["GUARDIAN_PG_DSN"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(owner.Close)
		if _, err := migrate.Postgres(ctx, owner, migrate.PostgresOptions{}); err != nil {
			t.Fatal(err)
		}
		r.owner, appDSN, pgCreds = owner, pe["GUARDIAN_PG_APP_DSN"], pe
	} else {
		pg := testenv.Postgres(t)
		r.owner, appDSN = pg.Owner, pg.AppDSN
	}
	if slow("postgres") {
		u, err := url.Parse(appDSN)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = r.proxy("postgres", u.Host)
		appDSN = u.String()
	}
	env["GUARDIAN_PG_APP_DSN"] = appDSN
	for k, v := range testenv.FunctionDSNs(t, pgCreds, appDSN) {
		env[k] = v
	}

	// Redis: always the scenario's own.
	re, dir := testenv.Private(t, "redis")
	r.dirs["redis"] = dir
	testenv.UseRedis(env, re)
	if slow("redis") {
		// The proxy listens on TCP only: no socket, or the edge would
		// go round it.
		testenv.UseRedis(env, map[string]string{
			"GUARDIAN_REDIS_ADDR":     r.proxy("redis", re["GUARDIAN_REDIS_ADDR"]),
			"GUARDIAN_REDIS_PASSWORD": re["GUARDIAN_REDIS_PASSWORD"],
		})
	}

	// ClickHouse: the scenario's own server, or its own database on the run's.
	if private("clickhouse") {
		ce, dir := testenv.Private(t, "clickhouse")
		r.dirs["clickhouse"] = dir
		conn, err := clickhouse.Open(&clickhouse.Options{
			Addr:        []string{ce["GUARDIAN_CLICKHOUSE_ADDR"]},
			Auth:        clickhouse.Auth{Database: "default", Username: ce["GUARDIAN_CLICKHOUSE_USER"], Password: ce["GUARDIAN_CLICKHOUSE_PASSWORD"]},
			DialTimeout: 5 * time.Second,
			ReadTimeout: 30 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := migrate.ClickHouse(ctx, conn, "guardian"); err != nil {
			t.Fatal(err)
		}
		r.ch, r.chTable = conn, "guardian.snapshots"
		for _, k := range []string{"GUARDIAN_CLICKHOUSE_ADDR", "GUARDIAN_CLICKHOUSE_USER", "GUARDIAN_CLICKHOUSE_PASSWORD"} {
			env[k] = ce[k]
		}
		env["GUARDIAN_CLICKHOUSE_DATABASE"] = "guardian"
	} else {
		ch := testenv.ClickHouse(t)
		r.ch, r.chTable = ch.Conn, ch.Database+".snapshots"
		env["GUARDIAN_CLICKHOUSE_ADDR"], env["GUARDIAN_CLICKHOUSE_USER"], env["GUARDIAN_CLICKHOUSE_PASSWORD"] = ch.Addr, ch.User, ch.Password
		env["GUARDIAN_CLICKHOUSE_DATABASE"] = ch.Database
	}
	if slow("clickhouse") {
		env["GUARDIAN_CLICKHOUSE_ADDR"] = r.proxy("clickhouse", env["GUARDIAN_CLICKHOUSE_ADDR"])
	}

	for k, v := range o.env {
		env[k] = v
	}
	r.c = testenv.NewCustomer(t, r.owner, []byte(env["GUARDIAN_KEY_PEPPER"]), []byte(env["GUARDIAN_SESSION_SECRET"]))
	r.key = r.c.AccountKey(t, "read")
	r.collector = r.c.CollectorKey(t, r.c.ServerID)
	_, r.session = r.c.Session(t)
	r.stack = testenv.StartStack(t, env)
	r.load = testenv.NewLoad(t, r.stack)

	// Warm up: every credential cached at the edge, every function
	// started, the customer's plan cached by ingest.
	for _, q := range r.requests("warm") {
		body, tag := "", ""
		if q.Body != nil {
			body, tag = q.Body(0)
		}
		if o := r.load.Do(q.Kind, q.Method, q.Path, body, tag, q.Header); o.Status != 200 {
			t.Fatalf("warm-up %s: %d %s %s", q.Kind, o.Status, o.Code, o.Err)
		}
	}
	return r
}

// requests is the load's mix: about 300 requests/s.
func (r *rig) requests(prefix string) []testenv.LoadRequest {
	marker := testenv.Name(prefix)
	return []testenv.LoadRequest{
		{Kind: "key", Method: "GET", Path: "/api/v1/whoami", Header: bearer(r.key), PerSecond: 150},
		// A ClickHouse insert takes ~0.3 s here: enough workers for the
		// batcher to group them.
		{Kind: "ingest", Method: "POST", Path: "/api/v1/ingest", Header: bearer(r.collector), PerSecond: 50, Workers: 16,
			Body: func(n int) (string, string) {
				tag := marker + "-" + strconv.Itoa(n)
				return snapshot(tag), tag
			}},
		{Kind: "session", Method: "GET", Path: "/api/v1/sessions", Header: cookie(r.session), PerSecond: 100},
	}
}

// startLoad starts the steady load and waits until every kind is answered.
func (r *rig) startLoad() {
	r.t.Helper()
	r.load.Start(r.requests("m")...)
	start := time.Now()
	r.waitFor("steady load", 30*time.Second, func() bool {
		outs := startedAfter(r.load.Outcomes(), start)
		for _, k := range []string{"key", "ingest", "session"} {
			if len(with(ofKind(outs, k), status(200))) < 10 {
				return false
			}
		}
		return true
	})
}

// probe sends one request beside the load; audited says whether the
// edge writes a row for it.
func (r *rig) probe(kind string, audited bool, method, path, body string, header map[string]string) testenv.Outcome {
	o := r.load.Do(kind, method, path, body, "", header)
	if !audited && o.RequestID != "" {
		r.noRow[o.RequestID] = true
	}
	return o
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

func cookie(token string) map[string]string {
	return map[string]string{"Cookie": "guardian_token=" + token}
}

// snapshot is a small collector snapshot carrying marker.
func snapshot(marker string) string {
	return `{"collector_version":"faults/1","timestamp":"` + time.Now().UTC().Format(time.RFC3339) +
		`","marker":"` + marker + `","system":{"hostname":"db1","uptime_seconds":604800}}`
}

func login(email, pw string) string {
	b, _ := json.Marshal(map[string]string{"email": email, "password": pw})
	return string(b)
}

// stop stops one of the scenario's own servers and returns when it is gone.
func (r *rig) stop(svc string) time.Time {
	r.t.Helper()
	if err := testenv.Stop(r.dirs[svc], svc); err != nil {
		r.t.Fatal(err)
	}
	return time.Now()
}

// start starts it again (same port) and returns when it answers.
func (r *rig) start(svc string) time.Time {
	r.t.Helper()
	at := time.Now()
	if _, err := testenv.Start(r.dirs[svc], svc); err != nil {
		r.t.Fatal(err)
	}
	if svc == "postgres" {
		r.owner.Reset() // its connections died with the server
	}
	return at
}

// proxy starts an in-process toxiproxy in front of upstream and returns
// the address to use instead.
func (r *rig) proxy(svc, upstream string) string {
	r.t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, svc, "127.0.0.1:0", upstream)
	if err := srv.Collection.Add(p, true); err != nil {
		r.t.Fatalf("toxiproxy for %s: %v", svc, err)
	}
	r.t.Cleanup(p.Stop)
	r.proxies[svc] = p
	return p.Listen
}

// slow adds latency to everything svc sends back, on open connections
// and new ones, and returns when it is in place.
func (r *rig) slow(svc string, latency time.Duration) time.Time {
	r.t.Helper()
	doc := fmt.Sprintf(`{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":%d}}`, latency.Milliseconds())
	if _, err := r.proxies[svc].Toxics.AddToxicJson(strings.NewReader(doc)); err != nil {
		r.t.Fatalf("latency toxic on %s: %v", svc, err)
	}
	return time.Now()
}

// fast removes the latency.
func (r *rig) fast(svc string) time.Time {
	r.t.Helper()
	at := time.Now()
	if err := r.proxies[svc].Toxics.RemoveToxic(context.Background(), "slow"); err != nil {
		r.t.Fatalf("removing the latency toxic on %s: %v", svc, err)
	}
	return at
}

// waitFor polls cond until it holds, or fails the test after limit.
func (r *rig) waitFor(what string, limit time.Duration, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: not within %s; so far: %s", what, limit, testenv.Tally(r.load.Outcomes()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAnswers waits until n answers of the load started after since.
func (r *rig) waitAnswers(what string, since time.Time, n int, kinds ...string) {
	r.t.Helper()
	r.waitFor(what, 60*time.Second, func() bool {
		outs := startedAfter(r.load.Outcomes(), since)
		if len(kinds) > 0 {
			outs = ofKind(outs, kinds...)
		}
		return len(outs) >= n
	})
}

// metric sums the samples of name whose labels include every one of
// labels (e.g. `function="auth"`) on Caddy's metrics endpoint.
func (r *rig) metric(name string, labels ...string) float64 {
	r.t.Helper()
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(r.stack.Metrics(r.t)))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, lbl, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(lbl, l)
		}
		if v, err := strconv.ParseFloat(strings.Fields(value)[0], 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

// checkAudit waits until the spool is empty and every audited answer in
// outs has its row, and returns how many rows were expected and how many
// the database holds. It fails the test if an audited answer lacks its
// Request-Id, if a row is missing or extra, or if a hash chain does not
// hold.
func (r *rig) checkAudit(outs []testenv.Outcome) (expected, found int) {
	r.t.Helper()
	return r.checkAuditAllowing(outs, 0)
}

// checkAuditAllowing is checkAudit where up to extra rows may exist
// beyond those expected: rows of requests answered 503 "outcome unknown",
// which ran, and whose row may have been kept after all.
func (r *rig) checkAuditAllowing(outs []testenv.Outcome, extra int) (expected, found int) {
	r.t.Helper()
	var ids []string
	for _, o := range outs {
		switch {
		case o.Status == 0, o.Code == "audit_unavailable", r.noRow[o.RequestID]:
		case o.RequestID == "":
			r.t.Errorf("%s answered %d without a Request-Id: the edge did not audit it", o.Kind, o.Status)
		default:
			ids = append(ids, o.RequestID)
		}
	}
	r.waitFor("the audit spool to drain", 60*time.Second, func() bool { return r.metric("guardian_audit_spool_bytes") == 0 })
	ctx := context.Background()
	var byID, total int
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := r.owner.QueryRow(ctx, "SELECT count(*) FILTER (WHERE request_id = ANY($1)), count(*) FROM api_audit_log", ids).Scan(&byID, &total)
		if err == nil && byID == len(ids) && total >= byID && total-byID <= extra {
			break
		}
		if time.Now().After(deadline) {
			r.t.Errorf("audit: %d rows for the %d audited answers, %d rows in all (%d more allowed) (%v)", byID, len(ids), total, extra, err)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	rep, err := audit.Verify(ctx, r.owner)
	if err != nil {
		r.t.Errorf("audit chain: %v", err)
	} else if !rep.OK() {
		r.t.Errorf("audit chain broken: %v", rep.Breaks)
	}
	return len(ids), total
}

// checkSnapshots compares ClickHouse with the ingest answers in outs: every
// snapshot answered 200 is stored exactly once and whole, and every row
// stored is one sent whole. It returns the rows stored and how many of
// them were answered something other than 200.
func (r *rig) checkSnapshots(outs []testenv.Outcome) (stored int, notOK map[string]bool) {
	r.t.Helper()
	sent := map[string]testenv.Outcome{}
	for _, o := range ofKind(outs, "ingest") {
		sent[o.Tag] = o
	}
	rows, err := r.ch.Query(context.Background(), "SELECT payload FROM "+r.chTable)
	if err != nil {
		r.t.Fatalf("reading snapshots: %v", err)
	}
	defer rows.Close()
	seen := map[string]int{}
	notOK = map[string]bool{}
	for rows.Next() {
		var payload string
		if err := rows.Scan(&payload); err != nil {
			r.t.Fatal(err)
		}
		stored++
		var doc struct{ Marker string }
		_ = json.Unmarshal([]byte(payload), &doc)
		o, ok := sent[doc.Marker]
		switch {
		case !ok:
			r.t.Errorf("ClickHouse holds a snapshot nobody sent: %.200q", payload)
			continue
		case payload != o.Body:
			r.t.Errorf("snapshot %s stored half-written: %.200q", doc.Marker, payload)
		}
		seen[doc.Marker]++
		if o.Status != 200 {
			notOK[doc.Marker] = true
		}
	}
	if err := rows.Err(); err != nil {
		r.t.Fatal(err)
	}
	for m, n := range seen {
		if n > 1 {
			r.t.Errorf("snapshot %s stored %d times", m, n)
		}
	}
	for tag, o := range sent {
		if o.Status == 200 && seen[tag] == 0 {
			r.t.Errorf("snapshot %s answered 200 but not stored", tag)
		}
	}
	return stored, notOK
}

// report logs the scenario's summary line.
func (r *rig) report(outs []testenv.Outcome, expected, found int, extra ...string) {
	r.t.Helper()
	line := fmt.Sprintf("faults: %s: sent %d, answered %s; audit rows expected %d, found %d", r.name, len(outs), testenv.Tally(outs), expected, found)
	for _, e := range extra {
		line += "; " + e
	}
	r.t.Log(line)
}

// requireAnswered fails for any request that got no answer.
func (r *rig) requireAnswered(outs []testenv.Outcome) {
	r.t.Helper()
	for _, o := range outs {
		if o.Status == 0 {
			r.t.Errorf("%s got no answer: %s", o.Kind, o.Err)
		}
	}
}

// Selections of outcomes.

func ofKind(outs []testenv.Outcome, kinds ...string) []testenv.Outcome {
	return with(outs, func(o testenv.Outcome) bool { return slices.Contains(kinds, o.Kind) })
}

func startedAfter(outs []testenv.Outcome, t time.Time) []testenv.Outcome {
	return with(outs, func(o testenv.Outcome) bool { return o.Start.After(t) })
}

// within selects requests sent after from and answered before to.
func within(outs []testenv.Outcome, from, to time.Time) []testenv.Outcome {
	return with(outs, func(o testenv.Outcome) bool { return o.Start.After(from) && o.End.Before(to) })
}

func status(s int) func(testenv.Outcome) bool {
	return func(o testenv.Outcome) bool { return o.Status == s }
}

func with(outs []testenv.Outcome, keep func(testenv.Outcome) bool) []testenv.Outcome {
	var out []testenv.Outcome
	for _, o := range outs {
		if keep(o) {
			out = append(out, o)
		}
	}
	return out
}

// cpuTicks is the CPU time pid has used, in clock ticks.
func cpuTicks(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// functionPid finds the running process of function name among Caddy's
// children.
func (r *rig) functionPid(name string) int {
	if pids := testenv.FunctionChildren(r.stack.Cmd.Process.Pid, name); len(pids) > 0 {
		return pids[0]
	}
	return 0
}
