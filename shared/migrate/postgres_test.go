package migrate_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestPostgresMigrationsRunOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	pg := testenv.PostgresEmpty(t)
	ctx := context.Background()
	all, _ := migrate.Files("postgres")

	var wg sync.WaitGroup
	counts := make([]int, 4)
	errs := make([]error, 4)
	for i := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			applied, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{})
			counts[i], errs[i] = len(applied), err
		}()
	}
	wg.Wait()
	total := 0
	for i := range counts {
		if errs[i] != nil {
			t.Fatalf("migrator %d: %v", i, errs[i])
		}
		total += counts[i]
	}
	if total != len(all) {
		t.Fatalf("%d migrations applied in all, want %d (each exactly once)", total, len(all))
	}
	again, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{})
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v, err %v", again, err)
	}
}

func TestPostgresRefusesAChangedMigration(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pg.Owner.Exec(ctx, "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{}); err == nil {
		t.Fatal("a changed migration was accepted")
	}
}

// insertCustomerWithAudit creates a customer with a user, a server, a key
// and two audit rows, as the runtime role would.
func insertCustomerWithAudit(t *testing.T, db *pgxpool.Pool) string {
	t.Helper()
	ctx := context.Background()
	var customer, user, server string
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(db.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('Acme') RETURNING id").Scan(&customer))
	must(db.QueryRow(ctx, "INSERT INTO users (customer_id, email) VALUES ($1, $2) RETURNING id", customer, testenv.Name("u")+"@example.com").Scan(&user))
	must(db.QueryRow(ctx, "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, 'db1', 'db1.example') RETURNING id", customer).Scan(&server))
	_, err := db.Exec(ctx, `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4) VALUES ($1, 'account', 'admin', 'ci', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12')`, customer)
	must(err)
	_, err = db.Exec(ctx, `INSERT INTO api_keys (customer_id, kind, server_id, name, key_hash, last4) VALUES ($1, 'collector', $2, 'db1', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Cd34')`, customer, server)
	must(err)
	for _, action := range []string{"create", "auth_failed"} {
		_, err = db.Exec(ctx, `INSERT INTO api_audit_log (customer_id, user_id, source_ip, user_agent, request_id, method, path, resource_type, action, result, status_code, metadata)
			VALUES ($1, $2, '203.0.113.9', 'curl/8', $3, 'POST', '/api/v1/keys', 'api_key', $4, 'success', 201, '{"scope":"admin"}')`,
			customer, user, testenv.Name("req-"), action)
		must(err)
	}
	return customer
}

// asRole connects as function fn's role, until t ends.
func asRole(t *testing.T, pg *testenv.PG, fn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pg.FunctionDSNs["GUARDIAN_PG_DSN_"+strings.ToUpper(fn)])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// refused checks that who may not run stmt: permission denied (42501),
// by a grant or by a trigger.
func refused(t *testing.T, db *pgxpool.Pool, who, stmt string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), stmt, args...); sqlState(err) != "42501" {
		t.Errorf("%s: %q: got %v, want permission denied", who, stmt, err)
	}
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestRuntimeRoleCanOnlyReadAndAppendTheAuditLog(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	app := pg.App(t)
	ctx := context.Background()
	insertCustomerWithAudit(t, pg.Owner)

	var n int
	if err := app.QueryRow(ctx, "SELECT count(*) FROM api_audit_log").Scan(&n); err != nil || n != 2 {
		t.Fatalf("runtime role reads %d rows, err %v", n, err)
	}
	for priv, want := range map[string]bool{"SELECT": true, "INSERT": true, "UPDATE": false, "DELETE": false, "TRUNCATE": false} {
		var has bool
		if err := app.QueryRow(ctx, "SELECT has_table_privilege(current_user, 'api_audit_log', $1)", priv).Scan(&has); err != nil || has != want {
			t.Errorf("runtime role has %s on api_audit_log: %v, want %v (err %v)", priv, has, want, err)
		}
	}
	for _, stmt := range []string{
		"UPDATE api_audit_log SET status_code = 200",
		"UPDATE api_audit_log SET customer_id = NULL",
		"DELETE FROM api_audit_log",
		"TRUNCATE api_audit_log",
		"UPDATE customers SET audit_salt = audit_salt", // its rows' digests
	} {
		_, err := app.Exec(ctx, stmt)
		if code := sqlState(err); code != "42501" {
			t.Errorf("runtime role: %q: got %v (SQLSTATE %q), want permission denied (42501)", stmt, err, code)
		}
	}
}

// TestRuntimeRoleHoldsOnlyWhatTheEdgeRuns: the runtime role is the
// edge's (the functions and jobs have their own), so it may run the
// edge's statements and nothing that changes customers, users or keys.
// With more, the edge's DSN could delete a live customer, which
// anonymises its audit trail (0011), or raise a key's scope.
func TestRuntimeRoleHoldsOnlyWhatTheEdgeRuns(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	app := pg.App(t)
	ctx := context.Background()
	customer := insertCustomerWithAudit(t, pg.Owner)
	for _, stmt := range []string{
		// caddymodules/auth authenticator.go keyQuery and sessionQuery.
		`SELECT k.id, k.customer_id, k.kind, coalesce(k.scope, ''), coalesce(k.server_id::text, ''), k.key_hash,
			least(k.revoked_at, k.expires_at) <= now(),
			(extract(epoch FROM least(k.revoked_at, k.expires_at)) - extract(epoch FROM now()))::float8
		FROM api_keys k WHERE k.key_hash = decode(repeat('ab', 32), 'hex')`,
		`SELECT s.user_id, s.customer_id, s.expires_at, s.revoked_at IS NOT NULL, u.role
		FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = gen_random_uuid()`,
		// touch.go.
		`UPDATE api_keys k SET last_used_at = v.at
		FROM unnest(ARRAY(SELECT id FROM api_keys LIMIT 1), ARRAY[now()]) AS v(id, at)
		WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)
			AND k.id IN (SELECT id FROM api_keys WHERE id = ANY(ARRAY(SELECT id FROM api_keys)) FOR NO KEY UPDATE SKIP LOCKED)`,
		`UPDATE sessions s SET last_seen_at = v.at
		FROM unnest(ARRAY[gen_random_uuid()], ARRAY[now()]) AS v(id, at)
		WHERE s.id = v.id AND s.last_seen_at < v.at
			AND s.id IN (SELECT id FROM sessions WHERE id = ANY(ARRAY[gen_random_uuid()]) FOR NO KEY UPDATE SKIP LOCKED)`,
		// caddymodules/audit digests.go, writer.go; caddymodules/guardian.
		"SELECT id::text, audit_salt FROM customers WHERE id = ANY(ARRAY['" + customer + "'::uuid])",
		"SELECT writer_id, writer_seq, row_hash FROM api_audit_log WHERE (writer_id, writer_seq) IN (SELECT * FROM unnest(ARRAY['w'], ARRAY[1::bigint]))",
		"SELECT version, checksum FROM schema_migrations",
	} {
		if _, err := app.Exec(ctx, stmt); err != nil {
			t.Errorf("runtime role: %q: %v", stmt, err)
		}
	}
	for _, stmt := range []string{
		"DELETE FROM customers WHERE id = '" + customer + "'",
		"INSERT INTO customers (name) VALUES ('x')",
		"UPDATE customers SET delete_after = now(), deletion_requested_at = now()",
		"UPDATE customers SET plan = 'pro'",
		"SELECT name FROM customers",
		"SELECT password_hash FROM users",
		"SELECT email FROM users",
		"UPDATE users SET role = 'admin'",
		"INSERT INTO users (customer_id, email) VALUES ('" + customer + "', 'x@example.com')",
		"UPDATE api_keys SET scope = 'admin'",
		"UPDATE api_keys SET revoked_at = now()",
		"UPDATE api_keys SET expires_at = NULL",
		"DELETE FROM api_keys",
		"INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4) VALUES ('" + customer + "', 'account', 'admin', 'x', decode(repeat('cd', 32), 'hex'), 'Ab12')",
		"UPDATE sessions SET expires_at = expires_at",
		"INSERT INTO sessions (user_id, customer_id, expires_at) SELECT id, customer_id, now() FROM users",
		"SELECT count(*) FROM servers",
		"SELECT count(*) FROM idempotency_keys",
		"SELECT secret_sealed FROM mfa_totp",
		"SELECT credential FROM webauthn_credentials",
		"SELECT count(*) FROM mfa_recovery_codes",
		"SELECT count(*) FROM mfa_challenges",
		"SELECT count(*) FROM mfa_attempts",
		"SELECT count(*) FROM deleted_servers",
		"SELECT forget_deleted_customers('0 seconds')",
	} {
		refused(t, app, "runtime role", stmt)
	}
}

func TestAuditLogIsAppendOnlyEvenForTheOwner(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	insertCustomerWithAudit(t, pg.Owner)
	for _, stmt := range []string{
		"UPDATE api_audit_log SET status_code = 200",
		"UPDATE api_audit_log SET customer_id = NULL, status_code = 200",
		"DELETE FROM api_audit_log",
		"TRUNCATE api_audit_log",
	} {
		if _, err := pg.Owner.Exec(ctx, stmt); sqlState(err) != "42501" {
			t.Errorf("owner: %q: got %v, want refusal by trigger", stmt, err)
		}
	}
	var n int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_audit_log").Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows = %d, err %v", n, err)
	}
}

func TestDeletingACustomerKeepsItsAuditRowsAnonymised(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	app := pg.Owner // account-purge's deletion (its role: TestEachFunctionRoleReachesOnlyItsTables)
	ctx := context.Background()
	customer := insertCustomerWithAudit(t, app)
	other := insertCustomerWithAudit(t, app)

	if _, err := app.Exec(ctx, "DELETE FROM customers WHERE id = $1", customer); err != nil {
		t.Fatalf("delete customer: %v", err)
	}
	for _, table := range []string{"users", "servers", "api_keys", "sessions"} {
		var n int
		if err := app.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE customer_id = $1", customer).Scan(&n); err != nil || n != 0 {
			t.Errorf("%s: %d rows left for the deleted customer (err %v)", table, n, err)
		}
	}
	var orphaned, kept int
	if err := app.QueryRow(ctx, "SELECT count(*) FILTER (WHERE customer_id IS NULL), count(*) FILTER (WHERE customer_id = $1) FROM api_audit_log", other).Scan(&orphaned, &kept); err != nil {
		t.Fatal(err)
	}
	if orphaned != 2 || kept != 2 {
		t.Fatalf("audit rows: %d with customer nulled (want 2), %d of the other customer (want 2)", orphaned, kept)
	}
	var meta string
	if err := app.QueryRow(ctx, "SELECT metadata->>'scope' FROM api_audit_log WHERE customer_id IS NULL LIMIT 1").Scan(&meta); err != nil || meta != "admin" {
		t.Fatalf("anonymised row lost its content: %q, %v", meta, err)
	}
}

func TestConstraintsRefuseInconsistentKeys(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	app := pg.Owner
	ctx := context.Background()
	var customer string
	if err := app.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('Acme') RETURNING id").Scan(&customer); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, sql string }{
		{"account key without scope", `INSERT INTO api_keys (customer_id, kind, name, key_hash, last4) VALUES ($1, 'account', 'k', decode(repeat('01', 32), 'hex'), 'abcd')`},
		{"collector key without server", `INSERT INTO api_keys (customer_id, kind, name, key_hash, last4) VALUES ($1, 'collector', 'k', decode(repeat('02', 32), 'hex'), 'abcd')`},
		{"hash of the wrong length", `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4) VALUES ($1, 'account', 'read', 'k', decode('abcd', 'hex'), 'abcd')`},
		{"unknown scope", `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4) VALUES ($1, 'account', 'root', 'k', decode(repeat('03', 32), 'hex'), 'abcd')`},
		{"upper-case email", `INSERT INTO users (customer_id, email) VALUES ($1, 'Bob@Example.com')`},
	}
	for _, tc := range cases {
		if _, err := app.Exec(ctx, tc.sql, customer); sqlState(err) != "23514" {
			t.Errorf("%s: got %v, want a check violation", tc.name, err)
		}
	}
}

// Statements more than one role's case names.
const (
	insertAudit = "INSERT INTO api_audit_log (request_id, method, path, action, result, status_code) VALUES ('x', 'GET', '/', 'read', 'success', 200)"
	// lockSession is shared/stepup LockSession's.
	lockSession = "SELECT true FROM sessions WHERE id = gen_random_uuid() AND revoked_at IS NULL AND expires_at > now() FOR SHARE"
	// lockOpen is shared/account LockOpen's.
	lockOpen = "SELECT deletion_requested_at IS NOT NULL FROM customers WHERE id = gen_random_uuid() FOR SHARE"
	// stepUp is stepup.Admit's question (shared/stepup), hasFactors
	// mfa.Enrolled's (shared/mfa): whether a user has a second factor.
	stepUp     = "SELECT s.reauth_at, s.aal, EXISTS (SELECT 1 FROM mfa_totp t WHERE t.user_id = s.user_id AND t.confirmed_at IS NOT NULL) OR EXISTS (SELECT 1 FROM webauthn_credentials w WHERE w.user_id = s.user_id) FROM sessions s WHERE s.id = gen_random_uuid() AND s.revoked_at IS NULL"
	hasFactors = "SELECT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = gen_random_uuid() AND confirmed_at IS NOT NULL), (SELECT count(*) FROM webauthn_credentials WHERE user_id = gen_random_uuid()), (SELECT count(*) FROM mfa_recovery_codes WHERE user_id = gen_random_uuid() AND used_at IS NULL)"
)

// TestEachFunctionRoleReachesOnlyItsTables connects as function roles and
// checks a statement each needs and some it must not be able to run.
func TestEachFunctionRoleReachesOnlyItsTables(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	insertCustomerWithAudit(t, pg.Owner)
	as := func(fn string) *pgxpool.Pool { return asRole(t, pg, fn) }
	cases := []struct {
		fn      string
		allowed []string
		denied  []string
	}{
		{"healthz", []string{"SELECT 1"}, []string{"SELECT count(*) FROM customers", "SELECT count(*) FROM api_keys", "SELECT count(*) FROM api_audit_log"}},
		{"audit", []string{"SELECT count(*) FROM api_audit_log"}, []string{"SELECT count(*) FROM api_keys", "SELECT count(*) FROM users", insertAudit, "SELECT audit_salt FROM customers", "SELECT id FROM customers"}},
		{"audit_verify", []string{"SELECT count(*) FROM api_audit_log", "SELECT id, audit_salt FROM customers"}, []string{"SELECT name FROM customers", "SELECT count(*) FROM api_keys", insertAudit, "UPDATE customers SET name = name"}},
		{"ingest", []string{"SELECT id, plan FROM customers"}, []string{"SELECT name FROM customers", "SELECT count(*) FROM api_keys", "UPDATE customers SET plan = 'pro'"}},
		{"keys", []string{stepUp, lockSession, "SELECT count(*) FROM api_keys", "UPDATE api_keys SET revoked_at = revoked_at, revoked_reason = revoked_reason", "SELECT id FROM api_keys FOR UPDATE"}, []string{"SELECT count(*) FROM users", "SELECT count(*) FROM api_audit_log", "DELETE FROM api_keys", "SELECT count(*) FROM servers", "UPDATE api_keys SET scope = 'admin'", "UPDATE api_keys SET key_hash = key_hash", "SELECT secret_sealed FROM mfa_totp", "SELECT credential FROM webauthn_credentials", "UPDATE sessions SET revoked_at = revoked_at"}},
		{"sessions", []string{stepUp, lockSession, "SELECT count(*) FROM sessions", "UPDATE sessions SET revoked_at = revoked_at", "UPDATE customers SET delete_after = delete_after", "UPDATE api_keys SET revoked_reason = revoked_reason",
			// functions/sessions: the user's lock, before ending sessions.
			"SELECT 1 FROM users WHERE id = gen_random_uuid() FOR SHARE", "SELECT 1 FROM users WHERE id = gen_random_uuid() FOR NO KEY UPDATE",
			// functions/sessions: scheduling the account's deletion.
			"UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '1 hour' WHERE id = gen_random_uuid() AND deletion_requested_at IS NULL RETURNING delete_after",
			"SELECT delete_after FROM customers WHERE id = gen_random_uuid()"},
			[]string{"SELECT password_hash FROM users", "SELECT email FROM users", "UPDATE users SET password_hash = password_hash", "UPDATE users SET role = role", "DELETE FROM customers", "INSERT INTO sessions (user_id, customer_id, expires_at) SELECT id, customer_id, now() FROM users", "UPDATE customers SET plan = 'pro'", "UPDATE api_keys SET scope = 'admin'", "UPDATE sessions SET expires_at = expires_at", "SELECT audit_salt FROM customers", "SELECT name, plan FROM customers", "SELECT secret_sealed FROM mfa_totp", "SELECT credential FROM webauthn_credentials"}},
		{"mfa", []string{"SELECT count(*) FROM mfa_totp", "UPDATE sessions SET revoked_at = revoked_at",
			// shared/mfa: a registration's account name, the user's lock.
			"SELECT email FROM users WHERE id = gen_random_uuid()", "SELECT 1 FROM users WHERE id = gen_random_uuid() FOR UPDATE"},
			[]string{"SELECT password_hash FROM users", "SELECT google_subject FROM users", "UPDATE users SET password_hash = NULL", "UPDATE users SET role = 'admin'", "SELECT count(*) FROM api_keys", "UPDATE sessions SET user_id = user_id"}},
		{"servers", []string{stepUp, lockSession, "SELECT count(*) FROM servers", lockOpen, "UPDATE servers SET hostname = hostname", "SELECT id FROM servers FOR UPDATE"}, []string{"UPDATE customers SET plan = 'pro'", "SELECT count(*) FROM users", "SELECT count(*) FROM api_audit_log", "UPDATE servers SET customer_id = customer_id", "UPDATE api_keys SET scope = 'admin'", "UPDATE idempotency_keys SET customer_id = customer_id", "SELECT audit_salt FROM customers", "SELECT name, plan FROM customers", "SELECT secret_sealed FROM mfa_totp", "SELECT credential FROM webauthn_credentials", "UPDATE sessions SET revoked_at = revoked_at"}},
		// secretscan revokes through revoke_reported_keys only.
		{"secretscan", []string{"SELECT count(*) FROM revoke_reported_keys(ARRAY[decode(repeat('ab', 32), 'hex')], ARRAY[decode(repeat('ab', 32), 'hex')], ARRAY[decode(repeat('cd', 32), 'hex')])",
			// functions/secretscan adminEmails.
			"SELECT customer_id::text, email FROM users WHERE customer_id = ANY(ARRAY[gen_random_uuid()]) AND role = 'admin' ORDER BY email"},
			[]string{"SELECT password_hash FROM users", "SELECT google_subject FROM users", "SELECT count(*) FROM api_keys", "UPDATE api_keys SET revoked_at = revoked_at, revoked_reason = revoked_reason", "UPDATE api_keys SET revoked_reason = 'x'", "SELECT count(*) FROM api_audit_log", "DELETE FROM api_keys", "SELECT count(*) FROM sessions", "UPDATE api_keys SET key_hash = key_hash", "UPDATE api_keys SET scope = 'admin'", "UPDATE api_keys SET customer_id = customer_id", "SELECT name FROM customers", "SELECT audit_salt FROM customers", "SELECT count(*) FROM leak_places", "INSERT INTO leak_places (key_id, place) VALUES (gen_random_uuid(), decode(repeat('ab', 32), 'hex'))", "DELETE FROM leak_places"}},
		{"auth", []string{"SELECT count(*) FROM users", "UPDATE users SET password_hash = password_hash", "UPDATE sessions SET revoked_at = revoked_at", lockOpen,
			// functions/auth: sign-in and re-auth.
			"SELECT u.id, u.customer_id, coalesce(u.password_hash, ''), c.deletion_requested_at IS NOT NULL FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.email = 'a@example.com'",
			"SELECT coalesce(u.password_hash, ''), c.deletion_requested_at IS NOT NULL FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.id = gen_random_uuid()"},
			[]string{"SELECT count(*) FROM api_keys", "DELETE FROM sessions", "SELECT count(*) FROM api_audit_log", "UPDATE users SET role = 'admin'", "UPDATE users SET customer_id = customer_id", "UPDATE mfa_totp SET secret_sealed = secret_sealed", "SELECT audit_salt FROM customers", "SELECT name, plan FROM customers"}},
		{"oidc", []string{"UPDATE users SET google_subject = google_subject", lockOpen,
			// functions/oidc: finding the user, or signing a new customer up.
			"SELECT u.id, u.customer_id, u.password_hash IS NOT NULL, c.deletion_requested_at IS NOT NULL FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.google_subject = 'g'",
			"SELECT u.id, u.customer_id, u.password_hash IS NOT NULL, c.deletion_requested_at IS NOT NULL, coalesce(u.google_subject, '') FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.email = 'a@example.com' FOR UPDATE OF u",
			"INSERT INTO customers (name, plan) VALUES ('New', 'free') RETURNING id", hasFactors},
			[]string{"SELECT count(*) FROM api_keys", "DELETE FROM users", "SELECT count(*) FROM api_audit_log", "UPDATE users SET password_hash = password_hash", "UPDATE users SET email = email", "SELECT audit_salt FROM customers", "SELECT name, plan FROM customers", "SELECT secret_sealed FROM mfa_totp", "SELECT credential FROM webauthn_credentials", "SELECT code_hash FROM mfa_recovery_codes"}},
		// The jobs' statements (functions/jobs/retention-sweep main.go,
		// account-purge purge.go); neither may reach the audit salts, write
		// the audit log or read what signs users in.
		{"retention_sweep", []string{"SELECT id::text, plan FROM customers WHERE id = ANY(ARRAY[gen_random_uuid()])"}, []string{"SELECT audit_salt FROM customers", "SELECT name FROM customers", insertAudit, "SELECT count(*) FROM api_audit_log", "SELECT count(*) FROM users", "SELECT count(*) FROM api_keys", "UPDATE customers SET plan = 'pro'", "DELETE FROM customers"}},
		{"account_purge", []string{
			"SELECT count(*) FROM customers WHERE delete_after <= now()",
			"SELECT id::text FROM customers WHERE delete_after <= now() ORDER BY delete_after, id LIMIT 10",
			"DELETE FROM customers WHERE id = ANY(ARRAY[gen_random_uuid()]) AND delete_after <= now() RETURNING id::text",
			"SELECT forget_deleted_customers('30 days')",
			"DELETE FROM mfa_attempts WHERE window_start < now() - interval '1 day'",
			"SELECT server_id::text, customer_id::text FROM deleted_servers ORDER BY purged_at IS NOT NULL, deleted_at, server_id LIMIT 10",
			"SELECT count(*) FROM deleted_servers WHERE purged_at IS NULL AND deleted_at < now()",
			"UPDATE deleted_servers SET purged_at = now() WHERE server_id = ANY(ARRAY[gen_random_uuid()]) AND purged_at IS NULL AND deleted_at < now() - interval '10 minutes' RETURNING server_id::text",
			"DELETE FROM deleted_servers WHERE purged_at IS NOT NULL AND deleted_at < now() - interval '31 days'",
			"SELECT customer_id::text FROM deleted_customers ORDER BY deleted_at DESC, customer_id LIMIT 10",
		}, []string{"SELECT audit_salt FROM customers", "SELECT name FROM customers", insertAudit, "SELECT count(*) FROM api_audit_log", "SELECT password_hash FROM users", "SELECT count(*) FROM mfa_totp", "SELECT count(*) FROM api_keys", "UPDATE api_keys SET revoked_at = NULL", "UPDATE customers SET delete_after = NULL", "INSERT INTO customers (name) VALUES ('x')", "SELECT subject FROM mfa_attempts"}},
	}
	if len(cases) != len(migrate.FunctionRoles) {
		t.Fatalf("%d cases for %d function roles", len(cases), len(migrate.FunctionRoles))
	}
	for _, c := range cases {
		db := as(c.fn)
		for _, stmt := range c.allowed {
			if _, err := db.Exec(ctx, stmt); err != nil {
				t.Errorf("%s: %q: %v", c.fn, stmt, err)
			}
		}
		for _, stmt := range c.denied {
			refused(t, db, c.fn, stmt)
		}
		// Not a member of the runtime role (which would hand it every grant).
		var member bool
		if err := db.QueryRow(ctx, "SELECT pg_has_role(current_user, $1, 'MEMBER')", migrate.DefaultAppRole).Scan(&member); err != nil || member {
			t.Errorf("%s: member of %s: %v %v", c.fn, migrate.DefaultAppRole, member, err)
		}
	}
}

// TestAScheduledDeletionStands: functions/sessions may schedule an
// account's deletion, an hour ahead, once; the schedule is
// counted from the update (a transaction held open cannot move it back);
// it cannot bring the deletion forward, postpone it or call it off. The
// owner (an operator) can.
func TestAScheduledDeletionStands(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	sessions := asRole(t, pg, "sessions")
	customer, other := insertCustomerWithAudit(t, pg.Owner), insertCustomerWithAudit(t, pg.Owner)
	for _, stmt := range []string{
		"UPDATE customers SET deletion_requested_at = now(), delete_after = now() WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '59 minutes' WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '61 minutes' WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '2 days' WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = now(), delete_after = 'infinity' WHERE id = $1",
	} {
		refused(t, sessions, "sessions", stmt, other)
	}
	// Scheduled in a transaction that began a while before: counted from
	// the update, and whatever the request time said.
	tx, err := sessions.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var began time.Time
	if err := tx.QueryRow(ctx, "SELECT now() FROM pg_sleep(0.3)").Scan(&began); err != nil {
		t.Fatal(err)
	}
	var requested, after time.Time
	if err := tx.QueryRow(ctx, `UPDATE customers SET deletion_requested_at = now() - interval '1 day', delete_after = now() + interval '1 hour'
		WHERE id = $1 AND deletion_requested_at IS NULL RETURNING deletion_requested_at, delete_after`, customer).Scan(&requested, &after); err != nil {
		t.Fatalf("scheduling a deletion: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if requested.Sub(began) < 300*time.Millisecond || after.Sub(requested) != time.Hour {
		t.Errorf("scheduled at %s for %s in a transaction begun at %s: want from the update's time, an hour ahead", requested, after, began)
	}
	for _, stmt := range []string{
		"UPDATE customers SET delete_after = now() WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = NULL, delete_after = NULL WHERE id = $1",
		"UPDATE customers SET delete_after = delete_after + interval '1 day' WHERE id = $1",
		"UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '2 hours' WHERE id = $1",
	} {
		refused(t, sessions, "sessions, once scheduled", stmt, customer)
	}
	if _, err := pg.Owner.Exec(ctx, "UPDATE customers SET deletion_requested_at = NULL, delete_after = NULL WHERE id = $1", customer); err != nil {
		t.Errorf("the owner calls a deletion off: %v", err)
	}
}

// TestOnlyDueAccountsAreDeleted: account-purge's DELETE on customers
// takes only accounts whose deletion is due by PostgreSQL's clock: one
// DELETE of a live customer would delete its data and anonymise its
// audit trail. It forgets deletions after 30 days at the earliest,
// whatever interval it asks for. The owner (an operator) deletes any.
func TestOnlyDueAccountsAreDeleted(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	purge := asRole(t, pg, "account_purge")
	live, scheduled, due, byHand := insertCustomerWithAudit(t, pg.Owner), insertCustomerWithAudit(t, pg.Owner),
		insertCustomerWithAudit(t, pg.Owner), insertCustomerWithAudit(t, pg.Owner)
	if _, err := pg.Owner.Exec(ctx, `UPDATE customers SET deletion_requested_at = now(),
		delete_after = CASE WHEN id = $1 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END WHERE id = ANY($2::uuid[])`,
		scheduled, []string{scheduled, due}); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"DELETE FROM customers WHERE id = $1", "DELETE FROM customers WHERE id = $1 AND delete_after IS NULL"} {
		refused(t, purge, "account_purge, a live account", stmt, live)
	}
	refused(t, purge, "account_purge, an account not yet due", "DELETE FROM customers WHERE id = $1", scheduled)
	// A statement naming a live account with a due one deletes neither.
	refused(t, purge, "account_purge, a due and a live account", "DELETE FROM customers WHERE id = ANY($1::uuid[])", []string{due, live})
	var deleted []string
	rows, err := purge.Query(ctx, "DELETE FROM customers WHERE id = ANY($1::uuid[]) AND delete_after <= now() RETURNING id::text", []string{due, live, scheduled})
	if err == nil {
		deleted, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || len(deleted) != 1 || deleted[0] != due {
		t.Fatalf("account_purge deleting the due account: %v %v", deleted, err)
	}
	if tag, err := pg.Owner.Exec(ctx, "DELETE FROM customers WHERE id = $1", byHand); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("the owner deleting a live account: %v %v", tag, err)
	}
	var left int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM customers WHERE id = ANY($1::uuid[])", []string{live, scheduled}).Scan(&left); err != nil || left != 2 {
		t.Fatalf("%d of the live and the scheduled account left, %v", left, err)
	}

	// Deletions are remembered 30 days, whatever the caller asks.
	if _, err := pg.Owner.Exec(ctx, "UPDATE deleted_customers SET deleted_at = now() - interval '29 days' WHERE customer_id = $1", due); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Owner.Exec(ctx, "UPDATE deleted_customers SET deleted_at = now() - interval '31 days' WHERE customer_id = $1", byHand); err != nil {
		t.Fatal(err)
	}
	if _, err := purge.Exec(ctx, "SELECT forget_deleted_customers('0 seconds')"); err != nil {
		t.Fatal(err)
	}
	var remembered []string
	rows, err = pg.Owner.Query(ctx, "SELECT customer_id::text FROM deleted_customers WHERE customer_id = ANY($1::uuid[])", []string{due, byHand})
	if err == nil {
		remembered, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || len(remembered) != 1 || remembered[0] != due {
		t.Fatalf("remembered after forget_deleted_customers('0 seconds'): %v (want the deletion of 29 days ago only), %v", remembered, err)
	}
}

// TestSecretscanWritesOnlyItsRevocationRows: as the secretscan role, an
// audit row must be an api_key deletion of a customer, with a salted
// digest, in a secretscan-* chain; its grant alone let it write any row
// into any customer's log, in a chain verify cannot hold to a customer.
func TestSecretscanWritesOnlyItsRevocationRows(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	scan := asRole(t, pg, "secretscan")
	customer := insertCustomerWithAudit(t, pg.Owner)
	const insert = `INSERT INTO api_audit_log (customer_id, user_agent, source_ip, request_id, method, path,
		resource_type, resource_id, action, result, status_code, metadata, occurred_at,
		writer_id, writer_seq, prev_hash, row_hash, customer_digest)
	VALUES ($1, 'GitHub-Hookshot', '192.0.2.1', gen_random_uuid()::text, 'POST', '/webhooks/github/secret-scanning', $2, 'k1', $3, 'success', 200, '{}', now(),
		$4, 1, NULL, decode(repeat('ab', 32), 'hex'), $5)`
	salted := append([]byte{3}, make([]byte, 32)...)
	for _, tc := range []struct {
		name                     string
		customer                 any
		resource, action, writer string
		digest                   []byte
		ok                       bool
	}{
		{"its revocation", customer, "api_key", "delete", "secretscan-a1", salted, true},
		{"no digest", customer, "api_key", "delete", "secretscan-a2", nil, false},
		{"the unknown customer's digest", customer, "api_key", "delete", "secretscan-a3", []byte{0}, false},
		{"an unsalted digest", customer, "api_key", "delete", "secretscan-a4", make([]byte, 32), false},
		{"another chain", customer, "api_key", "delete", "f61029e57e0b-0", salted, false},
		{"another action", customer, "api_key", "create", "secretscan-a5", salted, false},
		{"another resource", customer, "server", "delete", "secretscan-a6", salted, false},
		{"no customer", nil, "api_key", "delete", "secretscan-a7", salted, false},
	} {
		_, err := scan.Exec(ctx, insert, tc.customer, tc.resource, tc.action, tc.writer, tc.digest)
		if tc.ok && err != nil || !tc.ok && sqlState(err) != "42501" {
			t.Errorf("%s: got %v, want allowed %v", tc.name, err, tc.ok)
		}
	}
	// The edge's rows are not the trigger's business.
	if _, err := pg.App(t).Exec(ctx, insertAudit); err != nil {
		t.Errorf("the runtime role's row: %v", err)
	}
	// Nor may it slow them: a BEFORE (or INSTEAD OF) row trigger on
	// insert makes COPY, the audit writer's, insert row by row.
	var slow []string
	if err := pg.Owner.QueryRow(ctx, `SELECT coalesce(array_agg(tgname::text), '{}') FROM pg_trigger
		WHERE tgrelid = 'api_audit_log'::regclass AND NOT tgisinternal
			AND tgtype & 1 = 1 AND tgtype & 4 = 4 AND (tgtype & 2 = 2 OR tgtype & 64 = 64)`).Scan(&slow); err != nil || len(slow) != 0 {
		t.Errorf("row triggers before insert on the audit log: %v (err %v)", slow, err)
	}
}

// TestARevocationCannotBeWithdrawnOrPostponed updates revoked_at as each
// role that may write it, the owner included: setting it and moving it
// earlier work (a rotation's grace window, then a revocation during it),
// setting it back to NULL or later is refused.
func TestARevocationCannotBeWithdrawnOrPostponed(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	customer := insertCustomerWithAudit(t, pg.Owner)
	as := func(role string) *pgxpool.Pool {
		if role == "owner" {
			return pg.Owner
		}
		pool, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_"+strings.ToUpper(role)])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	// newRow adds a row of table that nothing has revoked, as the owner.
	newRow := func(table string) string {
		t.Helper()
		var id string
		q := `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4) VALUES ($1, 'account', 'read', 'k', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12') RETURNING id`
		if table == "sessions" {
			q = `INSERT INTO sessions (user_id, customer_id, expires_at) SELECT id, customer_id, now() + interval '1 day' FROM users WHERE customer_id = $1 RETURNING id`
		}
		if err := pg.Owner.QueryRow(ctx, q, customer).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	steps := []struct {
		set     string
		refused bool
	}{
		{"now() + interval '1 hour'", false},            // a rotation's grace window
		{"revoked_at", false},                           // unchanged
		{"revoked_at + interval '1 second'", true},      // postponed
		{"now()", false},                                // revoked during the window
		{"NULL", true},                                  // withdrawn
		{"revoked_at + interval '1 microsecond'", true}, // postponed, once past
		{"revoked_at - interval '1 second'", false},     // earlier still (a session; a key's is in effect: 0027)
	}
	for _, c := range []struct{ table, role string }{
		{"api_keys", "keys"}, {"api_keys", "servers"}, {"api_keys", "sessions"}, {"api_keys", "owner"},
		{"sessions", "auth"}, {"sessions", "mfa"}, {"sessions", "oidc"}, {"sessions", "sessions"}, {"sessions", "owner"},
	} {
		db, id := as(c.role), newRow(c.table)
		for _, step := range steps {
			stmt := "UPDATE " + c.table + " SET revoked_at = " + step.set + " WHERE id = $1"
			if c.table == "api_keys" {
				// A revocation ahead is a rotation's grace, as the product
				// writes it (only that one may change: 0028).
				stmt = "UPDATE api_keys SET revoked_at = " + step.set + ", revoked_reason = CASE WHEN (" + step.set + ") > now() THEN 'rotated' ELSE 'revoked' END WHERE id = $1"
			}
			var before, after *time.Time
			if err := pg.Owner.QueryRow(ctx, "SELECT revoked_at FROM "+c.table+" WHERE id = $1", id).Scan(&before); err != nil {
				t.Fatal(err)
			}
			_, err := db.Exec(ctx, stmt, id)
			if err := pg.Owner.QueryRow(ctx, "SELECT revoked_at FROM "+c.table+" WHERE id = $1", id).Scan(&after); err != nil {
				t.Fatal(err)
			}
			refused := step.refused || (c.table == "api_keys" && before != nil && !before.After(time.Now()) && step.set != "revoked_at")
			switch {
			case refused && sqlState(err) != "42501":
				t.Errorf("%s as %s: revoked_at = %s: got %v, want refused", c.table, c.role, step.set, err)
			case refused && !equalTimes(before, after):
				t.Errorf("%s as %s: revoked_at = %s: refused, yet changed from %v to %v", c.table, c.role, step.set, before, after)
			case !refused && err != nil:
				t.Errorf("%s as %s: revoked_at = %s: %v", c.table, c.role, step.set, err)
			}
		}
	}
}

// A key's revocation reason changes only with its revoked_at (0026), and
// neither changes once the revocation is in effect (0027), nor ever for a
// revocation other than a rotation in its grace (0028): a leaked key's
// reason cannot be relabelled by a role that may revoke.
func TestARevocationsReasonStands(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	customer := insertCustomerWithAudit(t, pg.Owner)
	var id string
	if err := pg.Owner.QueryRow(ctx, `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4, revoked_at, revoked_reason)
		VALUES ($1, 'account', 'read', 'k', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12', now() + interval '1 hour', 'rotated')
		RETURNING id`, customer).Scan(&id); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"keys", "servers", "sessions"} {
		db, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_"+strings.ToUpper(role)])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		if _, err := db.Exec(ctx, "UPDATE api_keys SET revoked_reason = 'relabelled' WHERE id = $1", id); sqlState(err) != "42501" {
			t.Errorf("%s relabelled a revocation: %v", role, err)
		}
	}
	// Revoked during its grace: earlier, with its reason, as the product does.
	if _, err := pg.Owner.Exec(ctx, "UPDATE api_keys SET revoked_at = now(), revoked_reason = 'revoked' WHERE id = $1", id); err != nil {
		t.Fatalf("revoking a key during its grace: %v", err)
	}
	// In effect now (0027): not relabelled, not even with revoked_at moved
	// a microsecond earlier, nor moved at all.
	for _, set := range []string{
		"revoked_reason = 'github_secret_scanning'",
		"revoked_at = revoked_at - interval '1 microsecond', revoked_reason = 'rotated'",
		"revoked_at = revoked_at - interval '1 day'",
	} {
		if _, err := pg.Owner.Exec(ctx, "UPDATE api_keys SET "+set+" WHERE id = $1", id); sqlState(err) != "42501" {
			t.Errorf("SET %s on a revocation in effect: %v", set, err)
		}
	}

	// A transaction begun before a key was revoked (its now() earlier
	// than the revocation) cannot relabel it either (0028).
	keys, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_KEYS"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(keys.Close)
	held, err := keys.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Rollback(ctx) }()
	if _, err := held.Exec(ctx, "SELECT now()"); err != nil {
		t.Fatal(err)
	}
	var leaked string
	if err := pg.Owner.QueryRow(ctx, `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4, revoked_at, revoked_reason)
		VALUES ($1, 'account', 'read', 'k', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Cd34', clock_timestamp(), 'github_secret_scanning')
		RETURNING id`, customer).Scan(&leaked); err != nil {
		t.Fatal(err)
	}
	if _, err := held.Exec(ctx, "UPDATE api_keys SET revoked_at = revoked_at - interval '1 microsecond', revoked_reason = 'rotated' WHERE id = $1", leaked); sqlState(err) != "42501" {
		t.Errorf("a transaction older than the revocation relabelled it: %v", err)
	}
}

func equalTimes(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// The app role's name is set into the migrations' SQL, comments
// included, and suffixed per function: anything but a plain lower-case
// name short enough for PostgreSQL's 63 bytes is refused before any SQL.
func TestAnAppRoleNameThatCouldBreakTheSQLIsRefused(t *testing.T) {
	t.Parallel()
	pg := testenv.PostgresEmpty(t)
	for _, role := range []string{"app\nDROP TABLE x", "App", "1app", "app-role", strings.Repeat("a", 41), `app"x`} {
		if _, err := migrate.Postgres(context.Background(), pg.Owner, migrate.PostgresOptions{AppRole: role}); err == nil || !strings.Contains(err.Error(), "app role") {
			t.Errorf("app role %q: %v", role, err)
		}
	}
	var n int
	if err := pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused role still ran SQL (%d, %v)", n, err)
	}
}

// A migration that cannot take a lock within LockTimeout (another
// transaction holds the table) is rolled back and tried again, instead of
// queueing the edge's queries behind its lock; past LockRetries the run
// fails, having applied nothing it could not finish.
func TestPostgresMigrationWaitsForLocksBoundedly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, release := range []bool{true, false} {
		pg := testenv.PostgresEmpty(t)
		// Each migration ends by recording itself here; a transaction
		// holding the table in EXCLUSIVE mode lets the runner read it but
		// not write to it.
		if _, err := pg.Owner.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
			checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			t.Fatal(err)
		}
		holder, err := pg.Owner.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := holder.Exec(ctx, "LOCK TABLE schema_migrations IN EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var retries []string
		opts := migrate.PostgresOptions{LockTimeout: 100 * time.Millisecond, LockRetries: 2, Log: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			retries = append(retries, format)
			if release && len(retries) == 1 {
				_ = holder.Rollback(ctx)
			}
		}}
		applied, err := migrate.Postgres(ctx, pg.Owner, opts)
		_ = holder.Rollback(ctx)
		all, _ := migrate.Files("postgres")
		if release {
			if err != nil || len(applied) != len(all) || len(retries) != 1 {
				t.Fatalf("lock released after the first retry: applied %d of %d, %d retries, err %v", len(applied), len(all), len(retries), err)
			}
			continue
		}
		if sqlState(err) != "55P03" || len(applied) != 0 || len(retries) != 2 {
			t.Fatalf("lock held throughout: applied %v, %d retries, err %v; want 55P03 after 2 retries", applied, len(retries), err)
		}
		var n int
		if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'customers'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("the failed migration left its tables (%d, %v)", n, err)
		}
	}
}

// Every role the migrations grant to is checked before the first one
// runs, so a missing role cannot stop a run part-way.
func TestPostgresRefusesToStartWithoutItsRoles(t *testing.T) {
	t.Parallel()
	pg := testenv.PostgresEmpty(t)
	ctx := context.Background()
	_, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{AppRole: "guardian_absent"})
	if err == nil || !strings.Contains(err.Error(), "guardian_absent, guardian_absent_account_purge") {
		t.Fatalf("err %v, want the missing roles named", err)
	}
	var n int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d migrations applied before the roles were checked (%v)", n, err)
	}
}

// A database migrated by a newer release is not reported up to date by
// an older guardianctl.
func TestPostgresRefusesADatabaseNewerThanItself(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pg.Owner.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')"); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{}); err == nil || !strings.Contains(err.Error(), "versions [9999]") {
		t.Fatalf("err %v, want the unknown version named", err)
	}
}

// The key list's successor lookup and the deletion's SET NULL find a
// key's successors by index, not by reading every customer's keys.
func TestKeySuccessorsAreFoundByIndex(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	conn, err := pg.Owner.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// An empty table: keep the planner off the sequential scan it would
	// rightly prefer there, to see whether an index serves the lookup.
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, "RESET enable_seqscan")
	rows, err := conn.Query(ctx, "EXPLAIN (COSTS OFF) SELECT n.id FROM api_keys n WHERE n.rotated_from = '00000000-0000-0000-0000-000000000001'")
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if plan := strings.Join(lines, "\n"); !strings.Contains(plan, "api_keys_rotated_from_idx") {
		t.Fatalf("a key's successors are not found by index:\n%s", plan)
	}
}

// Each new key or session removes the ended ones of its kind past the
// newest (0035): 10 collector keys per server, 1,000 account keys per
// customer, 100 sessions per user. Working ones (a rotation's grace
// included) are never removed, nor those of another server, customer or
// user; a function role without DELETE sets it off all the same.
func TestEndedKeysAndSessionsAreBounded(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	a, b := insertCustomerWithAudit(t, pg.Owner), insertCustomerWithAudit(t, pg.Owner)
	exec := func(db *pgxpool.Pool, q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := pg.Owner.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	keys := func(customer, kind, ended string, n int) {
		t.Helper()
		exec(pg.Owner, `INSERT INTO api_keys (customer_id, kind, scope, server_id, name, key_hash, last4, revoked_at, revoked_reason)
			SELECT $1, $2, CASE WHEN $2 = 'account' THEN 'read' END, CASE WHEN $2 = 'collector' THEN (SELECT id FROM servers WHERE customer_id = $1) END,
				'k', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12', `+ended+`, CASE WHEN `+ended+` IS NOT NULL THEN 'revoked' END
			FROM generate_series(1, $3) g`, customer, kind, n)
	}
	// As many ended as the bound and more, working ones, a rotation in its
	// grace, and keys that expired, put there with the triggers off: the
	// next key, inserted by a role that may not delete, prunes.
	exec(pg.Owner, "ALTER TABLE api_keys DISABLE TRIGGER api_keys_prune_ended")
	exec(pg.Owner, "ALTER TABLE sessions DISABLE TRIGGER sessions_prune_ended")
	for _, c := range []string{a, b} {
		keys(c, "collector", "now() - g * interval '1 minute'", 25)
		keys(c, "collector", "NULL", 3)
		keys(c, "account", "now() - g * interval '1 second'", 1200)
		keys(c, "account", "NULL", 5)
		keys(c, "account", "now() + interval '1 hour'", 2) // in a rotation's grace: working
		exec(pg.Owner, `UPDATE api_keys SET expires_at = now() - interval '1 day' WHERE id IN (SELECT id FROM api_keys WHERE customer_id = $1 AND kind = 'account' AND revoked_at IS NULL LIMIT 2)`, c)
	}
	// Keys revoked as leaked, older than all others, are kept whatever the
	// bound (0036).
	exec(pg.Owner, `INSERT INTO api_keys (customer_id, kind, server_id, name, key_hash, last4, revoked_at, revoked_reason)
		SELECT $1, 'collector', (SELECT id FROM servers WHERE customer_id = $1), 'leaked', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12',
			now() - interval '1 day' - g * interval '1 minute', 'github_secret_scanning'
		FROM generate_series(1, 3) g`, a)
	exec(pg.Owner, "ALTER TABLE api_keys ENABLE TRIGGER api_keys_prune_ended")
	// A new key of customer a, through the roles that mint them.
	servers, keysRole := pg.FunctionDSNs["GUARDIAN_PG_DSN_SERVERS"], pg.FunctionDSNs["GUARDIAN_PG_DSN_KEYS"]
	for dsn, kind := range map[string]string{servers: "collector", keysRole: "account"} {
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		exec(pool, `INSERT INTO api_keys (customer_id, kind, scope, server_id, name, key_hash, last4)
			SELECT $1, $2, CASE WHEN $2 = 'account' THEN 'read' END, CASE WHEN $2 = 'collector' THEN (SELECT id FROM servers WHERE customer_id = $1) END,
				'new', decode(md5(random()::text) || md5(random()::text), 'hex'), 'Ab12'`, a, kind)
		pool.Close()
	}
	ended := `SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = $2 AND least(revoked_at, expires_at) <= now()`
	working := `SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = $2 AND (least(revoked_at, expires_at) IS NULL OR least(revoked_at, expires_at) > now())`
	for _, tc := range []struct {
		customer, kind string
		ended, working int
	}{
		{a, "collector", 10 + 3, 3 + 1 + 1}, // 3 leaked, kept; the fixture's own key, and the new one
		{a, "account", 1000, 5 - 2 + 2 + 1 + 1},
		{b, "collector", 25 + 0, 3 + 1}, // another customer: untouched
		{b, "account", 1200 + 2, 5 - 2 + 2 + 1},
	} {
		if got := count(ended, tc.customer, tc.kind); got != tc.ended {
			t.Errorf("%s keys of %s: %d ended, want %d", tc.kind, tc.customer, got, tc.ended)
		}
		if got := count(working, tc.customer, tc.kind); got != tc.working {
			t.Errorf("%s keys of %s: %d working, want %d", tc.kind, tc.customer, got, tc.working)
		}
	}
	// The newest ended are the ones kept, and the leaked ones.
	if n := count(`SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = 'collector' AND revoked_at < now() - interval '10 minutes 30 seconds'
		AND revoked_reason <> 'github_secret_scanning'`, a); n != 0 {
		t.Errorf("%d older ended collector keys kept instead of newer ones", n)
	}

	// Sessions: 130 ended of user a (revoked or expired), 2 open; a new
	// one through the auth function's role.
	sessions := func(customer, state string, n int) {
		t.Helper()
		exec(pg.Owner, `INSERT INTO sessions (user_id, customer_id, expires_at, revoked_at)
			SELECT u.id, u.customer_id, `+state+` FROM users u, generate_series(1, $2) g WHERE u.customer_id = $1`, customer, n)
	}
	for _, c := range []string{a, b} {
		sessions(c, "now() + interval '1 day', now() - g * interval '1 second'", 100)
		sessions(c, "now() - g * interval '1 minute', NULL", 30)
		sessions(c, "now() + interval '1 day', NULL", 2)
	}
	exec(pg.Owner, "ALTER TABLE sessions ENABLE TRIGGER sessions_prune_ended")
	auth, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_AUTH"])
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	exec(auth, `INSERT INTO sessions (user_id, customer_id, expires_at) SELECT id, customer_id, now() + interval '1 day' FROM users WHERE customer_id = $1`, a)
	endedS := `SELECT count(*) FROM sessions WHERE customer_id = $1 AND (revoked_at IS NOT NULL OR expires_at <= now())`
	openS := `SELECT count(*) FROM sessions WHERE customer_id = $1 AND revoked_at IS NULL AND expires_at > now()`
	for _, tc := range []struct {
		customer    string
		ended, open int
	}{{a, 100, 3}, {b, 130, 2}} {
		if got := count(endedS, tc.customer); got != tc.ended {
			t.Errorf("sessions of %s: %d ended, want %d", tc.customer, got, tc.ended)
		}
		if got := count(openS, tc.customer); got != tc.open {
			t.Errorf("sessions of %s: %d open, want %d", tc.customer, got, tc.open)
		}
	}
}

// Every function that runs as its definer searches pg_temp last: a
// caller's temporary table of a product table's name would otherwise be
// what the owner reads and writes (0031, 0037).
func TestDefinerFunctionsSearchTempLast(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	rows, err := pg.Owner.Query(context.Background(), `SELECT p.proname, coalesce(array_to_string(p.proconfig, ';'), '')
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.prosecdef`)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var d [2]string
		return d, r.Scan(&d[0], &d[1])
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) < 6 {
		t.Fatalf("%d definer functions, want the migrations' 6 or more", len(defs))
	}
	for _, d := range defs {
		if d[1] != "search_path=pg_catalog, public, pg_temp" {
			t.Errorf("%s runs as its definer with %q, want search_path=pg_catalog, public, pg_temp", d[0], d[1])
		}
	}
}
