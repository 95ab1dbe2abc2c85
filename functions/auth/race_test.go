package main

import (
	"context"
	"testing"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

// A sign-in, re-auth or password change that checked the password, racing
// a change of the user's credentials that ends the user's sessions. The
// change is held open (its statements run, not committed) while the
// request reaches it; the request must then wait for it, and be answered
// by what it committed.

// Statements of the changes held open; $1 is the user.
var (
	passwordChange = []string{
		"UPDATE users SET password_hash = 'changed-' || password_hash, updated_at = now() WHERE id = $1",
		"UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
		"DELETE FROM mfa_challenges WHERE user_id = $1",
	}
	firstFactor = []string{
		"SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
		`INSERT INTO mfa_totp (user_id, secret_sealed, created_at, confirmed_at) VALUES ($1, decode(repeat('00', 40), 'hex'), now(), now())`,
		"UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
	}
)

type sent struct {
	a   answer
	err error
}

// duringChange runs the statements of a change of the user's credentials,
// posts body to path while the change is open, commits the change once
// the request waits for it (or has been answered without waiting), and
// returns the answer.
func (s *site) duringChange(t *testing.T, change []string, path, body string, header map[string]string) answer {
	t.Helper()
	ctx := context.Background()
	tx, err := s.pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for _, stmt := range change {
		if _, err := tx.Exec(ctx, stmt, s.c.UserID); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan sent, 1)
	go func() {
		a, err := s.send(path, body, header)
		done <- sent{a, err}
	}()
	var got *sent
	if _, r, finished := testenv.BlockedBy(t, s.pg.Owner, pid, done, migrate.FunctionRole(migrate.DefaultAppRole, "auth")); finished {
		got = &r // answered without waiting for the change
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		r := <-done
		got = &r
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	return got.a
}

// refusedWithoutSession checks that a (a sign-in or re-auth, what) was
// answered 401 code, set no cookie, and left the user no live session.
func (s *site) refusedWithoutSession(t *testing.T, a answer, code, what string) {
	t.Helper()
	if a.status != 401 || a.doc["code"] != code || a.cookie != nil {
		t.Fatalf("%s: %d %v", what, a.status, a.doc)
	}
	if n := s.liveSessions(t); n != 0 {
		t.Fatalf("%s: %d live sessions left", what, n)
	}
}

func (s *site) liveSessions(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", s.c.UserID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *site) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.pg.Owner.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}

// A password change promises that no session starts afterwards on the old
// password; a first second factor, that none starts without it. Sign-ins
// and re-auths already past the password when they commit keep both.
func TestSignInsRacingACredentialChangeKeepItsPromise(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	fresh := func(t *testing.T) {
		t.Helper()
		s.c.Password(t, goodPassword)
		s.exec(t, "DELETE FROM mfa_totp WHERE user_id = $1", s.c.UserID)
		s.exec(t, "DELETE FROM mfa_challenges WHERE user_id = $1", s.c.UserID)
		s.exec(t, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", s.c.UserID)
	}
	t.Run("a sign-in whose password changes meanwhile gets no session", func(t *testing.T) {
		fresh(t)
		a := s.duringChange(t, passwordChange, "/auth/login", login(s.email, goodPassword), nil)
		s.refusedWithoutSession(t, a, "invalid_credentials", "sign-in")
		if n := s.auditCount(t, "path = '/auth/login' AND action = 'auth_failed' AND user_id = $1 AND metadata->>'reason' = 'password_changed'", s.c.UserID); n != 1 {
			t.Fatalf("%d audit rows for the refusal", n)
		}
	})
	t.Run("a re-auth whose password changes meanwhile gets no session", func(t *testing.T) {
		fresh(t)
		_, token := s.c.Session(t)
		a := s.duringChange(t, passwordChange, "/auth/reauth", `{"password":"`+goodPassword+`"}`, cookieHeader(token))
		s.refusedWithoutSession(t, a, "invalid_credentials", "re-auth")
	})
	t.Run("a sign-in of a user with a factor whose password changes meanwhile gets no challenge", func(t *testing.T) {
		fresh(t)
		s.exec(t, firstFactor[1], s.c.UserID)
		a := s.duringChange(t, passwordChange, "/auth/login", login(s.email, goodPassword), nil)
		if a.status != 401 || a.doc["code"] != "invalid_credentials" || a.doc["mfa_token"] != nil {
			t.Fatalf("sign-in: %d %v", a.status, a.doc)
		}
		if n := s.auditCount(t, "resource_type = 'mfa_challenge' AND user_id = $1", s.c.UserID); n != 0 {
			t.Fatalf("%d challenges made on the old password", n)
		}
		var n int
		if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM mfa_challenges WHERE user_id = $1", s.c.UserID).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d challenges outlive the password change (%v)", n, err)
		}
	})
	t.Run("a sign-in racing a first factor is asked for it", func(t *testing.T) {
		fresh(t)
		a := s.duringChange(t, firstFactor, "/auth/login", login(s.email, goodPassword), nil)
		s.refusedWithoutSession(t, a, "mfa_required", "sign-in")
		if methods, _ := a.doc["methods"].([]any); len(methods) == 0 || methods[0] != "totp" {
			t.Fatalf("sign-in asked for %v", a.doc["methods"])
		}
	})
	t.Run("a re-auth racing a first factor is asked for it", func(t *testing.T) {
		fresh(t)
		_, token := s.c.Session(t)
		a := s.duringChange(t, firstFactor, "/auth/reauth", `{"password":"`+goodPassword+`"}`, cookieHeader(token))
		s.refusedWithoutSession(t, a, "mfa_required", "re-auth")
	})
	t.Run("a password change checked against a password changed meanwhile is refused", func(t *testing.T) {
		fresh(t)
		_, token := s.c.Session(t)
		a := s.duringChange(t, passwordChange[:1], "/auth/password",
			jsonBody(map[string]string{"current_password": goodPassword, "new_password": "another long passphrase 42"}), cookieHeader(token))
		if a.status != 401 || a.doc["code"] != "invalid_credentials" {
			t.Fatalf("password change: %d %v", a.status, a.doc)
		}
		var kept bool
		if err := s.pg.Owner.QueryRow(context.Background(), "SELECT password_hash LIKE 'changed-%' FROM users WHERE id = $1", s.c.UserID).Scan(&kept); err != nil || !kept {
			t.Fatalf("the change committed first was overwritten (%v)", err)
		}
	})
}
