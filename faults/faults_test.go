package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// limited selects answers the limiter decided with Redis.
func limited(o testenv.Outcome) bool { return o.Limited }

// notStatus selects answers other than s.
func notStatus(s int) func(testenv.Outcome) bool {
	return func(o testenv.Outcome) bool { return o.Status != s }
}

// describe lists a few outcomes for a failure message.
func describe(outs []testenv.Outcome) string {
	var parts []string
	for i, o := range outs {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("… %d more", len(outs)-5))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d %s %s", o.Kind, o.Status, o.Code, o.Err))
	}
	return strings.Join(parts, "; ")
}

// The limiter fails open while Redis is away, says so once, and resumes.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t, "redis-restart", options{})
	r.startLoad()
	if len(with(r.load.Outcomes(), limited)) == 0 {
		t.Fatal("no answer carried RateLimit headers before the fault")
	}
	down := r.stop("redis")
	r.waitAnswers("load while Redis is down", down, 300)
	up := r.start("redis")
	r.waitFor("limiting to resume", 30*time.Second, func() bool {
		return len(with(startedAfter(r.load.Outcomes(), up), limited)) > 0
	})
	r.waitAnswers("load after Redis is back", up, 300)
	outs := r.load.Stop()

	whileDown, warnings := r.requireFailedOpen(outs, down, up, "down")
	// A call on a connection the restart broke can mark Redis down again
	// for a probe's interval (a second) after limiting resumed; the
	// gauge clears by itself.
	r.waitFor("guardian_ratelimit_redis_up to be 1 after Redis came back", 10*time.Second, func() bool {
		return r.metric("guardian_ratelimit_redis_up") == 1
	})
	open := r.metric("guardian_ratelimit_degraded_decisions_total", `source="open"`)
	expected, found := r.checkAudit(outs)
	r.report(outs, expected, found, fmt.Sprintf("%d answered while Redis was down, none limited; %.0f decisions failed open; %d warning", len(whileDown), open, warnings))
}

// Cached credentials keep working while PostgreSQL is away; what needs
// the database gets 503; audit rows are spooled and replayed exactly once.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t, "postgres-restart", options{private: []string{"postgres"}})
	email := r.c.Password(t, password)
	fresh := r.c.AccountKey(t, "read") // never presented before the outage
	signIn := func() testenv.Outcome {
		o := r.load.Do("sign-in", "POST", "/auth/login", login(email, password), "", nil)
		if o.Status != 204 && o.RequestID != "" {
			r.noRow[o.RequestID] = true // anonymous and unanswered by the function: no row
		}
		return o
	}
	r.startLoad()

	down := r.stop("postgres")
	r.waitAnswers("load while PostgreSQL is down", down, 300)
	newKey := r.probe("fresh-key", true, "GET", "/api/v1/whoami", "", bearer(fresh))
	newLogin := signIn()
	r.waitFor("audit rows to reach the spool", 30*time.Second, func() bool {
		return r.metric("guardian_audit_rows_total", `dest="spool"`) > 0
	})
	up := r.start("postgres")
	r.waitFor("a key never seen before to be accepted", 60*time.Second, func() bool {
		return r.probe("fresh-key", true, "GET", "/api/v1/whoami", "", bearer(fresh)).Status == 200
	})
	r.waitFor("sign-in to work again", 60*time.Second, func() bool { return signIn().Status == 204 })
	r.waitFor("the sessions function to read again", 60*time.Second, func() bool {
		return len(with(ofKind(startedAfter(r.load.Outcomes(), up), "session"), status(200))) > 0
	})
	r.waitAnswers("load after PostgreSQL is back", up, 300)
	outs := r.load.Stop()

	r.requireAnswered(outs)
	if bad := with(ofKind(outs, "key", "ingest"), notStatus(200)); len(bad) > 0 {
		t.Errorf("%d cached-key requests not answered 200 while PostgreSQL went away: %s", len(bad), describe(bad))
	}
	sessionDown := with(ofKind(outs, "session"), func(o testenv.Outcome) bool {
		return o.Status != 200 && !(o.Status == 503 && o.Code == "unavailable")
	})
	if len(sessionDown) > 0 {
		t.Errorf("session reads answered other than 200 or the function's 503 unavailable: %s", describe(sessionDown))
	}
	if newKey.Status != 503 || newKey.Code != "auth_unavailable" {
		t.Errorf("a key never seen before, PostgreSQL down: %d %s, want 503 auth_unavailable", newKey.Status, newKey.Code)
	}
	if newLogin.Status != 503 {
		t.Errorf("sign-in, PostgreSQL down: %d %s, want 503", newLogin.Status, newLogin.Code)
	}
	// The outage is logged, not every request served from the cache in it.
	stale := strings.Count(r.stack.Log(), "serving cached credentials")
	if limit := int(time.Since(down)/(30*time.Second)) + 1; stale > limit {
		t.Errorf("%d \"serving cached credentials\" warnings, want at most %d (one per 30 s)", stale, limit)
	}
	r.waitFor("the spool to drain", 60*time.Second, func() bool { return r.metric("guardian_audit_spool_bytes") == 0 })
	expected, found := r.checkAudit(outs)
	spooled := r.metric("guardian_audit_rows_total", `dest="spool"`)
	replayed := r.metric("guardian_audit_replayed_rows_total")
	if spooled == 0 || replayed != spooled {
		t.Errorf("audit rows: %.0f spooled, %.0f replayed; want the same, above 0", spooled, replayed)
	}
	r.report(outs, expected, found, fmt.Sprintf("%.0f rows spooled, %.0f replayed; new key %d %s, sign-in %d while down; %d cache warning(s)",
		spooled, replayed, newKey.Status, newKey.Code, newLogin.Status, stale))
}

// Ingest answers 503 with Retry-After while ClickHouse is away, nothing
// is half-written, and storing resumes.
func TestClickHouseRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t, "clickhouse-restart", options{private: []string{"clickhouse"}})
	r.startLoad()
	down := r.stop("clickhouse")
	r.waitAnswers("ingest while ClickHouse is down", down, 40, "ingest")
	up := r.start("clickhouse")
	var recovered time.Time
	r.waitFor("ingest to store again", 60*time.Second, func() bool {
		ok := with(ofKind(startedAfter(r.load.Outcomes(), up), "ingest"), status(200))
		if len(ok) > 0 {
			recovered = ok[0].End
		}
		return len(ok) > 0
	})
	r.waitAnswers("ingest after ClickHouse is back", recovered, 40, "ingest")
	outs := r.load.Stop()

	r.requireAnswered(outs)
	if bad := with(ofKind(outs, "key", "session"), notStatus(200)); len(bad) > 0 {
		t.Errorf("%d requests that do not need ClickHouse failed: %s", len(bad), describe(bad))
	}
	ingest := ofKind(outs, "ingest")
	if bad := with(ingest, func(o testenv.Outcome) bool {
		return o.Status != 200 && !(o.Status == 503 && o.Code == "storage_unavailable" && o.RetryAfter != "")
	}); len(bad) > 0 {
		t.Errorf("ingest answered other than 200 or 503 storage_unavailable with Retry-After: %s", describe(bad))
	}
	whileDown := within(ingest, down, up)
	if len(whileDown) == 0 {
		t.Fatal("no snapshot was sent and answered while ClickHouse was down")
	}
	if bad := with(whileDown, notStatus(503)); len(bad) > 0 {
		t.Errorf("%d snapshots sent while ClickHouse was down were not answered 503: %s", len(bad), describe(bad))
	}
	stored, notOK := r.checkSnapshots(outs)
	if len(notOK) > 0 {
		t.Errorf("%d snapshots answered 503 (\"not stored\") are in ClickHouse", len(notOK))
	}
	expected, found := r.checkAudit(outs)
	r.report(outs, expected, found, fmt.Sprintf("%d snapshots answered 503 while down; ClickHouse holds %d rows = the %d answered 200",
		len(whileDown), stored, len(with(ingest, status(200)))))
}

// A function killed mid-request costs that request a 502; the next one
// gets a fresh process.
func TestFunctionCrash(t *testing.T) {
	t.Parallel()
	r := newRig(t, "function-crash", options{})
	r.c.Password(t, password)
	_, token := r.c.Session(t) // re-authenticating replaces it: not the load's session
	reauth := func(pw string) testenv.Outcome {
		return r.probe("reauth", true, "POST", "/auth/reauth", `{"password":"`+pw+`"}`, cookie(token))
	}
	if o := reauth("not-the-password-1"); o.Status != 401 { // starts the auth function
		t.Fatalf("warm-up re-authentication: %d %s", o.Status, o.Code)
	}
	r.startLoad()
	pid := r.functionPid("auth")
	if pid == 0 {
		t.Fatal("no running auth function")
	}
	crashesBefore := r.metric("guardian_function_crashes_total", `function="auth"`)
	idle := cpuTicks(pid)
	answer := make(chan testenv.Outcome, 1)
	go func() { answer <- reauth(password) }()
	// bcrypt takes ~230 ms of CPU: once the idle process burns some, the
	// request is inside it.
	r.waitFor("the auth function to verify the password", 30*time.Second, func() bool { return cpuTicks(pid) >= idle+3 })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var crashed testenv.Outcome
	select {
	case crashed = <-answer:
	case <-time.After(60 * time.Second):
		t.Fatal("the request whose function was killed got no answer")
	}
	next := reauth(password)
	r.waitAnswers("load after the crash", killed, 300)
	outs := r.load.Stop()

	r.requireAnswered(outs)
	if crashed.Status != 502 || crashed.Code != "function_failed" {
		t.Errorf("request in the killed function: %d %s, want 502 function_failed", crashed.Status, crashed.Code)
	}
	if next.Status != 204 {
		t.Errorf("next re-authentication: %d %s, want 204", next.Status, next.Code)
	}
	if p := r.functionPid("auth"); p == 0 || p == pid {
		t.Errorf("auth function pid %d after the crash (killed %d)", p, pid)
	}
	if n := r.metric("guardian_function_crashes_total", `function="auth"`) - crashesBefore; n != 1 {
		t.Errorf("guardian_function_crashes_total{function=\"auth\"} grew by %v, want 1", n)
	}
	if bad := with(ofKind(outs, "key", "ingest", "session"), notStatus(200)); len(bad) > 0 {
		t.Errorf("%d load requests failed while another function crashed: %s", len(bad), describe(bad))
	}
	expected, found := r.checkAudit(outs)
	var rowStatus int
	if err := r.owner.QueryRow(context.Background(), "SELECT status_code FROM api_audit_log WHERE request_id = $1", crashed.RequestID).Scan(&rowStatus); err != nil || rowStatus != 502 {
		t.Errorf("audit row of the crashed request: status %d (%v), want 502", rowStatus, err)
	}
	r.report(outs, expected, found, fmt.Sprintf("killed pid %d mid-request: %d %s; next %d", pid, crashed.Status, crashed.Code, next.Status))
}

// A full spool refuses audited requests before they run, says so, and
// loses no row of a request it answered.
func TestAuditSpoolFull(t *testing.T) {
	t.Parallel()
	run := t.TempDir()
	spool := filepath.Join(run, "audit-spool") // the Caddyfile's spool_dir under GUARDIAN_RUN_DIR
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", spool, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a 256 KiB tmpfs for the audit spool (%v); needs root", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(spool, syscall.MNT_DETACH) })
	r := newRig(t, "audit-spool-full", options{private: []string{"postgres"}, env: map[string]string{"GUARDIAN_RUN_DIR": run}})
	r.startLoad()

	down := r.stop("postgres")
	var full time.Time // the first answer refused for the audit
	r.waitFor("the spool to fill", 60*time.Second, func() bool {
		for _, o := range startedAfter(r.load.Outcomes(), down) {
			if o.Code == "audit_unavailable" && (full.IsZero() || o.End.Before(full)) {
				full = o.End
			}
		}
		return !full.IsZero()
	})
	r.waitAnswers("load while the spool is full", full, 150)
	alert := r.metric("guardian_audit_spool_full")
	spoolBytes := r.metric("guardian_audit_spool_bytes")
	up := r.start("postgres")
	r.waitFor("audited requests to be accepted again", 60*time.Second, func() bool {
		return len(with(ofKind(startedAfter(r.load.Outcomes(), up), "key"), status(200))) > 0
	})
	r.waitAnswers("load after PostgreSQL is back", up, 300)
	outs := r.load.Stop()

	r.requireAnswered(outs)
	refused := func(o testenv.Outcome) bool {
		return o.Code == "audit_unavailable" && strings.Contains(o.Detail, "nothing was done")
	}
	lost := func(o testenv.Outcome) bool { return o.Code == "audit_unavailable" && !refused(o) }
	if bad := with(outs, func(o testenv.Outcome) bool {
		return o.Status != 200 && o.Code != "audit_unavailable" && !(o.Kind == "session" && o.Code == "unavailable")
	}); len(bad) > 0 {
		t.Errorf("answers other than 200, 503 audit_unavailable (or the sessions function's 503): %s", describe(bad))
	}
	whileFull := within(outs, full, up)
	if len(whileFull) == 0 {
		t.Fatal("no request was sent and answered while the spool was full")
	}
	if ran := with(whileFull, func(o testenv.Outcome) bool { return !refused(o) }); len(ran) > 0 {
		t.Errorf("%d of %d requests sent after the spool was known to be full were not refused before running (503 \"nothing was done\"): %s",
			len(ran), len(whileFull), describe(ran))
	}
	if alert != 1 {
		t.Errorf("guardian_audit_spool_full = %v while audited requests were refused, want 1 (spool_bytes %v)", alert, spoolBytes)
	}
	stored, notOK := r.checkSnapshots(outs)
	var unaudited int
	for _, o := range ofKind(outs, "ingest") {
		if notOK[o.Tag] && refused(o) {
			t.Errorf("snapshot %s was refused (\"nothing was done\") but stored", o.Tag)
		}
		if notOK[o.Tag] && lost(o) {
			unaudited++
		}
	}
	expected, found := r.checkAuditAllowing(outs, len(with(outs, lost)))
	r.report(outs, expected, found, fmt.Sprintf("spool %.0f bytes when full, spool_full gauge %.0f; %d refused before running, %d answered \"outcome unknown\"; %d snapshots stored without an audit row; ClickHouse holds %d",
		spoolBytes, alert, len(with(outs, refused)), len(with(outs, lost)), unaudited, stored))
}

// requireFailedOpen checks what a Redis fault must look like to clients:
// every request answered 200, none sent between from and to limited (no
// RateLimit headers: the limiter failed open), and exactly one degradation
// warning in Caddy's log. It returns the requests of that window and the
// warnings counted.
func (r *rig) requireFailedOpen(outs []testenv.Outcome, from, to time.Time, state string) ([]testenv.Outcome, int) {
	r.t.Helper()
	r.requireAnswered(outs)
	if bad := with(outs, notStatus(200)); len(bad) > 0 {
		r.t.Errorf("%d requests not answered 200 while Redis was %s: %s", len(bad), state, describe(bad))
	}
	window := within(outs, from, to)
	if len(window) == 0 {
		r.t.Fatalf("no request was sent and answered while Redis was %s", state)
	}
	if n := len(with(window, limited)); n > 0 {
		r.t.Errorf("%d of %d requests sent while Redis was %s carry RateLimit headers: the limiter did not fail open", n, len(window), state)
	}
	warnings := strings.Count(r.stack.Log(), "failing open")
	if warnings != 1 {
		r.t.Errorf("%d degradation warnings in Caddy's log, want exactly 1", warnings)
	}
	return window, warnings
}

// Redis slower than the limiter's deadline: fail open, once, and resume.
func TestSlowRedis(t *testing.T) {
	t.Parallel()
	r := newRig(t, "slow-redis", options{slow: []string{"redis"}})
	r.startLoad()
	slowAt := r.slow("redis", 200*time.Millisecond)
	r.waitAnswers("load while Redis is slow", slowAt, 300)
	fastAt := r.fast("redis")
	r.waitFor("limiting to resume", 30*time.Second, func() bool {
		return len(with(startedAfter(r.load.Outcomes(), fastAt), limited)) > 0
	})
	r.waitAnswers("load after Redis is fast again", fastAt, 300)
	outs := r.load.Stop()

	whileSlow, warnings := r.requireFailedOpen(outs, slowAt, fastAt, "slow (200 ms, past the 50 ms deadline)")
	expected, found := r.checkAudit(outs)
	r.report(outs, expected, found, fmt.Sprintf("%d answered while Redis was slow, none limited; %d warning", len(whileSlow), warnings))
}

// PostgreSQL slow: everything still answered, every row durable, and a
// credential never seen before is looked up rather than refused.
func TestSlowPostgres(t *testing.T) {
	t.Parallel()
	r := newRig(t, "slow-postgres", options{slow: []string{"postgres"}})
	fresh := r.c.AccountKey(t, "read")
	r.startLoad()
	slowAt := r.slow("postgres", 200*time.Millisecond)
	newKey := r.probe("fresh-key", true, "GET", "/api/v1/whoami", "", bearer(fresh))
	r.waitAnswers("load while PostgreSQL is slow", slowAt, 150)
	fastAt := r.fast("postgres")
	r.waitAnswers("load after PostgreSQL is fast again", fastAt, 300)
	outs := r.load.Stop()

	r.requireAnswered(outs)
	if bad := with(outs, notStatus(200)); len(bad) > 0 {
		t.Errorf("%d requests not answered 200 while PostgreSQL was slow: %s", len(bad), describe(bad))
	}
	whileSlow := within(outs, slowAt, fastAt)
	if len(whileSlow) == 0 {
		t.Fatal("no request was sent and answered while PostgreSQL was slow")
	}
	expected, found := r.checkAudit(outs)
	r.report(outs, expected, found, fmt.Sprintf("%d answered while PostgreSQL was slow; new key %d; %.0f rows went through the spool",
		len(whileSlow), newKey.Status, r.metric("guardian_audit_rows_total", `dest="spool"`)))
}

// ClickHouse slow: ingest answers 200 or 503, never half-writes.
func TestSlowClickHouse(t *testing.T) {
	t.Parallel()
	r := newRig(t, "slow-clickhouse", options{slow: []string{"clickhouse"}})
	r.startLoad()
	slowAt := r.slow("clickhouse", 300*time.Millisecond)
	r.waitAnswers("ingest while ClickHouse is slow", slowAt, 20, "ingest")
	fastAt := r.fast("clickhouse")
	r.waitAnswers("ingest after ClickHouse is fast again", fastAt, 40, "ingest")
	outs := r.load.Stop()

	r.requireAnswered(outs)
	if bad := with(ofKind(outs, "key", "session"), notStatus(200)); len(bad) > 0 {
		t.Errorf("%d requests that do not need ClickHouse failed: %s", len(bad), describe(bad))
	}
	ingest := ofKind(outs, "ingest")
	if bad := with(ingest, func(o testenv.Outcome) bool {
		return o.Status != 200 && !(o.Status == 503 && o.Code == "storage_unavailable" && o.RetryAfter != "")
	}); len(bad) > 0 {
		t.Errorf("ingest answered other than 200 or 503 storage_unavailable with Retry-After: %s", describe(bad))
	}
	whileSlow := within(ingest, slowAt, fastAt)
	if len(whileSlow) == 0 {
		t.Fatal("no snapshot was sent and answered while ClickHouse was slow")
	}
	stored, notOK := r.checkSnapshots(outs)
	expected, found := r.checkAudit(outs)
	r.report(outs, expected, found, fmt.Sprintf("%d snapshots answered while ClickHouse was slow (%d 200); ClickHouse holds %d, %d of them answered 503",
		len(whileSlow), len(with(whileSlow, status(200))), stored, len(notOK)))
}
