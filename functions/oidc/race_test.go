package main

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/glassmkr/guardian/functions/oidc/oidctest"
	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

// A Google sign-in of a user whose first second factor is being turned on
// (the factor's transaction has locked the user, stored the factor and
// ended the other sessions, and not committed yet) waits for the factor
// and asks for it: a session started without it, after it ended the
// others, would outlive it.
func TestAGoogleSignInRacingAFirstFactorIsAskedForIt(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	ctx := context.Background()
	var email string
	if err := s.pg.Owner.QueryRow(ctx, "UPDATE users SET google_subject = 'race-sub' WHERE id = $1 RETURNING email", s.c.UserID).Scan(&email); err != nil {
		t.Fatal(err)
	}
	s.idp.QueueUser(oidctest.User{Subject: "race-sub", Email: email, EmailVerified: true})
	b := s.browser(t)
	callback := b.begin()

	factor, err := s.pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = factor.Rollback(ctx) }()
	for _, stmt := range []string{
		"SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
		`INSERT INTO mfa_totp (user_id, secret_sealed, created_at, confirmed_at) VALUES ($1, decode(repeat('00', 40), 'hex'), now(), now())`,
		"UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
	} {
		if _, err := factor.Exec(ctx, stmt, s.c.UserID); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	var pid int
	if err := factor.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		r   reply
		err error
	}
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", callback, nil)
		req.Header.Set("Cf-Connecting-Ip", s.clientIP)
		resp, err := b.client.Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		done <- answer{r: reply{status: resp.StatusCode, header: resp.Header, body: string(body), location: resp.Header.Get("Location")}}
	}()
	var got *answer
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, pid, done, migrate.FunctionRole(migrate.DefaultAppRole, "oidc")); finished {
		got = &a // answered without waiting for the factor
	}
	if err := factor.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		a := <-done
		got = &a
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	loc, _ := url.Parse(got.r.location)
	if got.r.status != http.StatusSeeOther || loc.Path != "/login" || loc.Query().Get("step") != "mfa" {
		t.Fatalf("callback: %d %q %s", got.r.status, got.r.location, got.r.body)
	}
	if b.cookie("/", "guardian_token") != nil {
		t.Fatal("Google alone gave a session to a user with a second factor")
	}
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", s.c.UserID); n != 0 {
		t.Fatalf("%d live sessions without the new factor", n)
	}
}
