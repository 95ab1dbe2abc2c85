package session_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/plan"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestStartRecordsTheAssuranceLevelAndReplaces(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	secret := []byte(strings.Repeat("s", 32))
	c := testenv.NewCustomer(t, pg.Owner, []byte(strings.Repeat("p", 32)), secret)
	ctx := context.Background()
	now := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	start := func(p session.Params) (session.Issued, error) {
		var issued session.Issued
		err := pgx.BeginFunc(ctx, pg.Owner, func(tx pgx.Tx) error {
			var err error
			issued, err = session.Start(ctx, tx, secret, p, now)
			return err
		})
		return issued, err
	}
	first, err := start(session.Params{UserID: c.UserID, CustomerID: c.ID, IP: "::ffff:192.0.2.1", UserAgent: strings.Repeat("u", 600)})
	if err != nil {
		t.Fatal(err)
	}
	second, err := start(session.Params{UserID: c.UserID, CustomerID: c.ID, Reauthed: true, AAL: session.AAL2, Replacing: first.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id      string
		aal     int
		reauth  bool
		revoked bool
	}{{first.ID, session.AAL1, false, true}, {second.ID, session.AAL2, true, false}} {
		var aal int
		var reauth, revoked bool
		if err := pg.Owner.QueryRow(ctx, "SELECT aal, reauth_at IS NOT NULL, revoked_at IS NOT NULL FROM sessions WHERE id = $1", tc.id).Scan(&aal, &reauth, &revoked); err != nil {
			t.Fatal(err)
		}
		if aal != tc.aal || reauth != tc.reauth || revoked != tc.revoked {
			t.Errorf("session %s: aal %d reauth %v revoked %v, want %+v", tc.id, aal, reauth, revoked, tc)
		}
	}
	if at, err := session.ReauthAt(ctx, pg.Owner, second.ID); err != nil || !at.Equal(now) {
		t.Errorf("ReauthAt %v %v", at, err)
	}
	if _, err := start(session.Params{UserID: c.UserID, CustomerID: c.ID, AAL: 3}); err == nil {
		t.Error("an unknown assurance level was stored")
	}
	if claims, err := session.Verify(secret, second.Token, now); err != nil || claims.SessionID() != second.ID {
		t.Errorf("token of the new session: %v", err)
	}
}

// A user agent PostgreSQL's text cannot hold as sent (Latin-1 bytes, a
// NUL, a multi-byte character cut at 512 bytes) still starts a session,
// stored cleaned; before, the INSERT failed and so did the sign-in.
func TestStartStoresAnyUserAgent(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	secret := []byte(strings.Repeat("s", 32))
	c := testenv.NewCustomer(t, pg.Owner, []byte(strings.Repeat("p", 32)), secret)
	ctx := context.Background()
	for _, ua := range []string{"Mozilla/5.0 (caf\xe9)", "a\x00b", "x" + strings.Repeat("é", 300)} {
		var issued session.Issued
		err := pgx.BeginFunc(ctx, pg.Owner, func(tx pgx.Tx) error {
			var err error
			issued, err = session.Start(ctx, tx, secret, session.Params{UserID: c.UserID, CustomerID: c.ID, IP: "192.0.2.1", UserAgent: ua}, time.Now())
			return err
		})
		if err != nil {
			t.Fatalf("user agent %q: %v", ua, err)
		}
		var stored string
		if err := pg.Owner.QueryRow(ctx, "SELECT user_agent FROM sessions WHERE id = $1", issued.ID).Scan(&stored); err != nil || len(stored) > 512 || stored == "" {
			t.Fatalf("user agent %q stored as %q (%v)", ua, stored, err)
		}
	}
}

// A sign-in that read the account as open, finishing after its deletion
// committed, gets no session: Start checks under the account's lock, so
// the session the deletion could not end is never made.
func TestNoSessionStartsForAnAccountScheduledForDeletion(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	if _, err := pg.Owner.Exec(ctx, "UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '29 days' WHERE id = $1", c.ID); err != nil {
		t.Fatal(err)
	}
	auth, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_AUTH"]) // as the sign-in function
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	err = pgx.BeginFunc(ctx, auth, func(tx pgx.Tx) error {
		_, err := session.Start(ctx, tx, []byte(strings.Repeat("s", 32)), session.Params{UserID: c.UserID, CustomerID: c.ID}, time.Now())
		return err
	})
	if !errors.Is(err, account.ErrClosing) {
		t.Fatalf("start: %v, want account.ErrClosing", err)
	}
	var n int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM sessions WHERE customer_id = $1 AND revoked_at IS NULL", c.ID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d live sessions (%v)", n, err)
	}
}

// asSignIn connects as the sign-in function's role: Lock's row locks need
// privileges the role must have.
func asSignIn(t *testing.T, pg *testenv.PG) *pgxpool.Pool {
	t.Helper()
	db, err := pgxpool.New(context.Background(), pg.FunctionDSNs["GUARDIAN_PG_DSN_AUTH"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func startIn(db *pgxpool.Pool, p session.Params) error {
	ctx := context.Background()
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		_, err := session.Start(ctx, tx, []byte(strings.Repeat("s", 32)), p, time.Now())
		return err
	})
}

func liveSessions(t *testing.T, pg *testenv.PG, userID string) int {
	t.Helper()
	var n int
	if err := pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", userID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A sign-in that checked a password changed since gets no session: the
// change ended the user's sessions, and one started after it on the old
// password would outlive it.
func TestStartRefusesAPasswordChangedSinceItWasChecked(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	db := asSignIn(t, pg)
	if _, err := pg.Owner.Exec(ctx, "UPDATE users SET password_hash = 'checked' WHERE id = $1", c.UserID); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Owner.Exec(ctx, "UPDATE users SET password_hash = 'changed' WHERE id = $1", c.UserID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []session.Params{
		{UserID: c.UserID, CustomerID: c.ID, PasswordHash: "checked"},
		{UserID: c.UserID, CustomerID: c.ID, PasswordHash: "checked", AAL: session.AAL2},
	} {
		if err := startIn(db, p); !errors.Is(err, session.ErrPasswordChanged) {
			t.Fatalf("aal %d: %v, want ErrPasswordChanged", p.AAL, err)
		}
	}
	if n := liveSessions(t, pg, c.UserID); n != 0 {
		t.Fatalf("%d sessions started on the old password", n)
	}
	if err := startIn(db, session.Params{UserID: c.UserID, CustomerID: c.ID, PasswordHash: "changed"}); err != nil {
		t.Fatalf("the current password: %v", err)
	}
	// A sign-in that checked no password (Google) is not refused.
	if err := startIn(db, session.Params{UserID: c.UserID, CustomerID: c.ID}); err != nil {
		t.Fatalf("no password checked: %v", err)
	}
}

// A session at assurance level 1 is a sign-in without a second factor:
// refused once the user has one (it was turned on while the sign-in was
// under way), so that it asks for the factor instead.
func TestStartRefusesLevelOneToAUserWithASecondFactor(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	db := asSignIn(t, pg)
	for _, tc := range []struct {
		name    string
		factor  string // SQL giving user $1 a factor, or ""
		refused bool
	}{
		{"no factor starts level 1", "", false},
		{"an authenticator app being enrolled is no factor yet",
			`INSERT INTO mfa_totp (user_id, secret_sealed, created_at) VALUES ($1, decode(repeat('00', 40), 'hex'), now())`, false},
		{"an authenticator app refuses level 1",
			`INSERT INTO mfa_totp (user_id, secret_sealed, created_at, confirmed_at) VALUES ($1, decode(repeat('00', 40), 'hex'), now(), now())`, true},
		{"a security key refuses level 1",
			`INSERT INTO webauthn_credentials (user_id, credential_id, name, credential) VALUES ($1, '\x0102', 'key', '{}')`, true},
	} {
		c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
		if tc.factor != "" {
			if _, err := pg.Owner.Exec(ctx, tc.factor, c.UserID); err != nil {
				t.Fatal(err)
			}
		}
		err := startIn(db, session.Params{UserID: c.UserID, CustomerID: c.ID, AAL: session.AAL1})
		if tc.refused != errors.Is(err, session.ErrSecondFactor) || (!tc.refused && err != nil) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if n := liveSessions(t, pg, c.UserID); n != map[bool]int{true: 0, false: 1}[tc.refused] {
			t.Errorf("%s: %d live sessions", tc.name, n)
		}
		if err := startIn(db, session.Params{UserID: c.UserID, CustomerID: c.ID, AAL: session.AAL2}); err != nil {
			t.Errorf("%s: level 2: %v", tc.name, err)
		}
	}
}

// A password change under way when a sign-in that checked the old password
// starts its session: Start waits for the change and then refuses. Without
// the user's lock it would read the old password (the change is not
// committed) and start a session the change never ends.
func TestStartWaitsForAPasswordChangeUnderWay(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	db := asSignIn(t, pg)
	if _, err := pg.Owner.Exec(ctx, "UPDATE users SET password_hash = 'checked' WHERE id = $1", c.UserID); err != nil {
		t.Fatal(err)
	}
	change, err := pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = change.Rollback(ctx) }()
	var pid int
	if err := change.QueryRow(ctx, "UPDATE users SET password_hash = 'changed' WHERE id = $1 RETURNING pg_backend_pid()", c.UserID).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := change.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", c.UserID); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- startIn(db, session.Params{UserID: c.UserID, CustomerID: c.ID, PasswordHash: "checked"})
	}()
	err = waitBlocked(t, pg.Owner, pid, done)
	if err := change.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		err = <-done
	}
	if !errors.Is(err, session.ErrPasswordChanged) {
		t.Fatalf("start: %v, want ErrPasswordChanged", err)
	}
	if n := liveSessions(t, pg, c.UserID); n != 0 {
		t.Fatalf("%d sessions outlive the password change", n)
	}
}

// errUnblocked is what waitBlocked returns for work that finished instead
// of waiting for the lock.
var errUnblocked = errors.New("finished without waiting for the lock")

// waitBlocked returns nil once a backend waits for a lock that backend
// pid holds, or the result of done if that comes first (wrapped in
// errUnblocked if it is nil).
func waitBlocked(t *testing.T, db *pgxpool.Pool, pid int, done <-chan error) error {
	t.Helper()
	_, err, finished := testenv.BlockedBy(t, db, pid, done)
	if finished && err == nil {
		err = errUnblocked
	}
	return err
}

// A user keeps at most plan.MaxSessionsPerUser open sessions: a sign-in
// past it ends those used least recently, and leaves ended and expired
// ones, and other users', as they are.
func TestStartEndsTheLeastUsedPastTheBound(t *testing.T) {
	t.Parallel()
	// Sessions used i minutes ago, i = 1..n; then some that must stay as
	// they are: expired, ended, and another user's.
	const extra = 5
	pg, c, now := userWithSessions(t, plan.MaxSessionsPerUser+extra)
	other := testenv.NewCustomer(t, pg.Owner, []byte(strings.Repeat("p", 32)), boundSecret)
	ctx := context.Background()
	if _, err := pg.Owner.Exec(ctx, `INSERT INTO sessions (user_id, customer_id, expires_at, last_seen_at, revoked_at, user_agent) VALUES
		($1, $2, $3::timestamptz - interval '1 hour', $3::timestamptz - interval '2 hours', NULL, 'expired'),
		($1, $2, $3::timestamptz + interval '1 day', $3::timestamptz - interval '2 hours', $3::timestamptz - interval '1 hour', 'ended'),
		($4, $5, $3::timestamptz + interval '1 day', $3::timestamptz - interval '2 hours', NULL, 'other user')`,
		c.UserID, c.ID, now, other.UserID, other.ID); err != nil {
		t.Fatal(err)
	}
	issued, err := signIn(ctx, pg, c, now)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pg.Owner.Query(ctx, `SELECT coalesce(user_agent, ''), id = $2, revoked_at IS NOT NULL, revoked_at = $3 FROM sessions
		WHERE user_id = $1 OR user_agent = 'other user'`, c.UserID, issued.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	open, endedNow := 0, map[string]bool{}
	for rows.Next() {
		var ua string
		var isNew, revoked bool
		var byThis *bool
		if err := rows.Scan(&ua, &isNew, &revoked, &byThis); err != nil {
			t.Fatal(err)
		}
		switch {
		case isNew && revoked:
			t.Fatal("the new session was ended")
		case ua == "expired" || ua == "other user" || ua == "ended":
			if (ua == "ended") != revoked || (byThis != nil && *byThis) {
				t.Errorf("session %q changed by the sign-in", ua)
			}
		case revoked:
			endedNow[ua] = true
		default:
			open++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if open != plan.MaxSessionsPerUser {
		t.Errorf("%d open sessions after the sign-in, want %d", open, plan.MaxSessionsPerUser)
	}
	// The least used: the oldest extra+1 by last use.
	for i := plan.MaxSessionsPerUser; i <= plan.MaxSessionsPerUser+extra; i++ {
		if ua := fmt.Sprintf("open %d", i); !endedNow[ua] {
			t.Errorf("%q (used %d minutes ago) is still open; ended: %v", ua, i, endedNow)
		}
	}
	if len(endedNow) != extra+1 {
		t.Errorf("%d sessions ended, want %d", len(endedNow), extra+1)
	}
}

// A sign-in past the bound does not wait for a session another
// transaction is ending (sign out everywhere else updates the user's rows
// in no set order, while the sign-in holds the session it replaces: a
// wait could deadlock); it skips that one and ends the next least used.
func TestStartSkipsSessionsBeingEnded(t *testing.T) {
	t.Parallel()
	pg, c, now := userWithSessions(t, plan.MaxSessionsPerUser+1)
	ctx := context.Background()
	// The least used, held by a transaction ending it.
	ending, _ := testenv.Hold(t, pg.Owner, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND user_agent = $2", c.UserID, fmt.Sprintf("open %d", plan.MaxSessionsPerUser+1))
	done := make(chan error, 1)
	go func() {
		_, err := signIn(ctx, pg, c, now)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sign-in waited for a session another transaction is ending")
	}
	var ended string
	if err := pg.Owner.QueryRow(ctx, "SELECT user_agent FROM sessions WHERE user_id = $1 AND revoked_at IS NOT NULL", c.UserID).Scan(&ended); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("open %d", plan.MaxSessionsPerUser); ended != want {
		t.Fatalf("the sign-in ended %q, want %q (the least used one not being ended)", ended, want)
	}
	if err := ending.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFresh(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{
		{now, true},
		{now.Add(-session.ReauthWindow), true},
		{now.Add(-session.ReauthWindow - time.Second), false},
		{now.Add(30 * time.Second), true}, // another host's clock a little ahead
		{now.Add(time.Minute), true},
		{now.Add(time.Minute + time.Second), false}, // a clock stepped back since
		{now.Add(time.Hour), false},
	} {
		if got := session.Fresh(tc.at, now); got != tc.want {
			t.Errorf("confirmed %s from now: fresh %v, want %v", tc.at.Sub(now), got, tc.want)
		}
	}
}

// A sign-in past the bound locks only the sessions it ends: the ones it
// keeps stay free for their own step-ups, sign-outs and last-seen writes
// while it commits.
func TestStartLocksOnlyTheSessionsItEnds(t *testing.T) {
	t.Parallel()
	pg, c, now := userWithSessions(t, plan.MaxSessionsPerUser)
	ctx := context.Background()
	tx, err := pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := session.Start(ctx, tx, boundSecret, session.Params{UserID: c.UserID, CustomerID: c.ID}, now); err != nil {
		t.Fatal(err)
	}
	for i, want := range map[int]bool{1: true, plan.MaxSessionsPerUser - 1: true, plan.MaxSessionsPerUser: false} {
		_, err := pg.Owner.Exec(ctx, "SELECT 1 FROM sessions WHERE user_id = $1 AND user_agent = $2 FOR NO KEY UPDATE NOWAIT", c.UserID, fmt.Sprintf("open %d", i))
		if free := err == nil; free != want {
			t.Errorf("session used %d minutes ago free during the sign-in: %v (%v), want %v", i, free, err, want)
		}
	}
}

// boundSecret signs the sessions of the bound's tests.
var boundSecret = []byte(strings.Repeat("s", 32))

// userWithSessions makes a customer on a database of its own whose user
// has n open sessions, "open i" last used i minutes before the now it
// returns.
func userWithSessions(t *testing.T, n int) (*testenv.PG, *testenv.Customer, time.Time) {
	t.Helper()
	pg := testenv.Postgres(t)
	c := testenv.NewCustomer(t, pg.Owner, []byte(strings.Repeat("p", 32)), boundSecret)
	now := time.Now()
	if _, err := pg.Owner.Exec(context.Background(), `INSERT INTO sessions (user_id, customer_id, expires_at, last_seen_at, user_agent)
		SELECT $1, $2, $3::timestamptz + interval '1 day', $3::timestamptz - i * interval '1 minute', 'open ' || i FROM generate_series(1, $4) i`,
		c.UserID, c.ID, now, n); err != nil {
		t.Fatal(err)
	}
	return pg, c, now
}

// signIn starts a session of c's user at now, in a transaction of its own.
func signIn(ctx context.Context, pg *testenv.PG, c *testenv.Customer, now time.Time) (session.Issued, error) {
	var issued session.Issued
	err := pgx.BeginFunc(ctx, pg.Owner, func(tx pgx.Tx) error {
		var err error
		issued, err = session.Start(ctx, tx, boundSecret, session.Params{UserID: c.UserID, CustomerID: c.ID}, now)
		return err
	})
	return issued, err
}
