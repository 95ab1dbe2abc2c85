// Package faults is Guardian's fault suite (`make test-faults`; `go test
// ./...` runs it too). Each scenario starts the whole edge (the
// repository's Caddyfile, the custom Caddy and the real function binaries)
// on servers of its own, puts it under steady load, breaks one thing, and
// checks what the README promises for that failure, then that everything
// recovers by itself.
//
// The load (shared/testenv/load.go) is about 300 requests/s from closed-loop
// workers, in three kinds:
//
//	key      GET  /api/v1/whoami    account key     (edge auth, limiter, audit, function)
//	ingest   POST /api/v1/ingest    collector key   (plus ClickHouse; each body carries a unique marker)
//	session  GET  /api/v1/sessions  session cookie  (plus the function's own PostgreSQL reads)
//
// Every answer is recorded (status, problem code, Request-Id, RateLimit
// headers). Each scenario logs one line:
//
//	faults: <scenario>: sent N, answered kind{status:count …}; audit rows expected E, found F; …
//
// "Audit rows expected" counts the answers the edge audited (they carry a
// Request-Id), except those refused with 503 audit_unavailable; "found" is
// every row in the scenario's own database, read once PostgreSQL is back
// and the spool replayed. They must be equal, each request id must be
// among the rows, and the hash chains (shared/audit.Verify) must hold.
//
// Scenarios (all in faults_test.go):
//
//   - redis-restart: Redis is stopped and started again. Every request is
//     answered 200; requests sent while Redis is down carry no RateLimit
//     headers (the limiter failed open); limiting resumes by itself once
//     Redis is back; Caddy's log has exactly one degradation warning.
//   - postgres-restart: PostgreSQL is stopped and started again. Cached
//     credentials keep working (key and ingest: 200 throughout; the session
//     passes the edge and only the sessions function answers 503
//     unavailable); a credential never seen before gets 503
//     auth_unavailable and a sign-in 503; audit rows go to the spool and are
//     replayed exactly once (rows spooled = rows replayed, spool empty
//     afterwards); the new credential and sign-in work again afterwards.
//   - clickhouse-restart: ClickHouse is stopped and started again. Ingest
//     answers 503 storage_unavailable with Retry-After while it is down and
//     200 again afterwards; ClickHouse holds exactly the snapshots answered
//     200 (each once, whole) and none of those sent while it was down.
//   - function-crash: the auth function is SIGKILLed while it verifies a
//     password for POST /auth/reauth. That request gets 502 function_failed
//     (and its audit row says 502), the next one is served by a fresh
//     process, and the load on other functions never notices.
//   - audit-spool-full: PostgreSQL is stopped and the audit spool lives on a
//     256 KiB tmpfs, so it fills. Once full, audited requests are refused
//     with 503 audit_unavailable before they run ("nothing was done"), the
//     guardian_audit_spool_full gauge says so, and no request that was
//     answered otherwise lacks its row after PostgreSQL returns (no silent
//     loss); a snapshot refused this way is not stored. Needs root (mount);
//     skipped otherwise.
//   - slow-redis, slow-postgres, slow-clickhouse: the stack reaches that
//     server through an in-process toxiproxy (github.com/Shopify/toxiproxy/v2)
//     that adds latency for a while, then removes it. Slow Redis (200 ms, past
//     the limiter's 50 ms deadline): every request 200, none limited while
//     slow, one warning, limiting resumes. Slow PostgreSQL (200 ms a round
//     trip): every request 200, a never-seen credential is looked up (200,
//     not 503), every row durable. Slow ClickHouse (300 ms): ingest answers
//     200 or 503 storage_unavailable, every 200 stored once and whole,
//     nothing stored that was not sent whole.
//
// Nothing here asserts a duration: waits are bounded waits for a condition,
// and phases are told apart by when each request started and ended
// relative to the fault.
package faults
