package mfa

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/testenv"
)

// The order of locks (session.Lock) between a sign-in and the changes of a
// user's credentials that end the user's sessions: whichever comes second
// waits for the first, and neither can leave a session the other should
// have ended or refused.

// errUnblocked is what blockedBy returns for work that finished instead
// of waiting for the lock.
var errUnblocked = errors.New("finished without waiting for the lock")

// blockedBy returns the backend that waits for a lock backend pid holds,
// once there is one, or the result of done if that comes first (wrapped
// in errUnblocked if it is nil).
func blockedBy(t *testing.T, db *pgxpool.Pool, pid int, done <-chan error) (int, error) {
	t.Helper()
	waiter, err, finished := testenv.BlockedBy(t, db, pid, done)
	if finished && err == nil {
		err = errUnblocked
	}
	return waiter, err
}

// hold is testenv.Hold.
func hold(t *testing.T, db *pgxpool.Pool, sql string, args ...any) (pgx.Tx, int) {
	t.Helper()
	return testenv.Hold(t, db, sql, args...)
}

func signInPool(t *testing.T, f *fixture) *pgxpool.Pool {
	t.Helper()
	db, err := pgxpool.New(context.Background(), f.pg.FunctionDSNs["GUARDIAN_PG_DSN_AUTH"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// A sign-in without a second factor that starts its session while the
// user's first factor is being turned on: it waits for the factor and is
// refused (it must ask for the factor), rather than starting a session
// after the factor ended the others. The factor's transaction is held
// where it ends the other sessions (a row lock on one of them).
func TestAFirstFactorAndASignInWithoutOneTakeTurns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		turnOn func(t *testing.T, f *fixture, keep string) func() error
	}{
		{"an authenticator app", func(t *testing.T, f *fixture, keep string) func() error {
			e, err := f.s.BeginTOTP(context.Background(), f.c.UserID, "a@example.com")
			if err != nil {
				t.Fatal(err)
			}
			code, _ := CodeAt(e.Secret, f.clock())
			return func() error {
				_, err := f.s.ConfirmTOTP(context.Background(), f.c.UserID, code, "", keep)
				return err
			}
		}},
		{"a security key", func(t *testing.T, f *fixture, keep string) func() error {
			reg, err := f.s.BeginRegistration(context.Background(), f.c.UserID, f.c.ID, keep)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := f.auth.Create(reg.Options)
			if err != nil {
				t.Fatal(err)
			}
			return func() error {
				_, _, err := f.s.FinishRegistration(context.Background(), f.c.UserID, keep, reg.Ceremony, "key", resp)
				return err
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			ctx := context.Background()
			keep, _ := f.c.Session(t)
			other, _ := f.c.Session(t)
			turnOn := tc.turnOn(t, f, keep)
			held, heldPID := hold(t, f.pg.Owner, "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", other)
			factorDone := make(chan error, 1)
			go func() { factorDone <- turnOn() }()
			factorPID, err := blockedBy(t, f.pg.Owner, heldPID, factorDone)
			if err != nil {
				t.Fatalf("turning the factor on: %v", err)
			}
			signIn := signInPool(t, f)
			startDone := make(chan error, 1)
			go func() {
				startDone <- pgx.BeginFunc(ctx, signIn, func(tx pgx.Tx) error {
					_, err := session.Start(ctx, tx, []byte(strings.Repeat("s", 32)), session.Params{UserID: f.c.UserID, CustomerID: f.c.ID, AAL: session.AAL1}, f.clock())
					return err
				})
			}()
			_, startErr := blockedBy(t, f.pg.Owner, factorPID, startDone)
			if err := held.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-factorDone; err != nil {
				t.Fatalf("turning the factor on: %v", err)
			}
			if startErr == nil {
				startErr = <-startDone
			}
			if !errors.Is(startErr, session.ErrSecondFactor) {
				t.Errorf("the sign-in: %v, want session.ErrSecondFactor", startErr)
			}
			var live []string
			rows, _ := f.pg.Owner.Query(ctx, "SELECT id::text FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", f.c.UserID)
			if live, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				t.Fatal(err)
			}
			if len(live) != 1 || live[0] != keep {
				t.Fatalf("live sessions %v, want only %s", live, keep)
			}
		})
	}
}

// A password change (functions/auth) locks the user and then drops the
// user's challenges. A second step under way takes the user's lock before
// it consumes its challenge: it waits for the change and finds its
// challenge gone. Taken the other way round (the challenge, then the user
// in session.Start), the two would deadlock.
func TestASecondStepWaitsForAPasswordChangeWithoutDeadlock(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	seed, _ := f.enrolTOTP(t)
	f.advance(Period)
	c := f.challenge(t)
	good, _ := CodeAt(seed, f.clock())
	change, changePID := hold(t, f.pg.Owner, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", f.c.UserID)
	done := make(chan error, 1)
	go func() {
		_, err := f.s.Complete(ctx, c, Proof{Code: good}, "192.0.2.7", func(tx pgx.Tx) error {
			_, err := session.Start(ctx, tx, []byte(strings.Repeat("s", 32)), session.Params{UserID: f.c.UserID, CustomerID: f.c.ID, AAL: session.AAL2}, f.clock())
			return err
		})
		done <- err
	}()
	_, err := blockedBy(t, f.pg.Owner, changePID, done)
	if err != nil {
		t.Fatalf("the second step did not wait for the password change: %v", err)
	}
	for _, stmt := range []string{
		"UPDATE users SET password_hash = 'changed' WHERE id = $1",
		"UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
		"DELETE FROM mfa_challenges WHERE user_id = $1",
	} {
		if _, err := change.Exec(ctx, stmt, f.c.UserID); err != nil {
			t.Fatalf("the password change: %s: %v", stmt, err)
		}
	}
	if err := change.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrChallenge) {
		t.Fatalf("the second step: %v, want ErrChallenge", err)
	}
	var live int
	if err := f.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", f.c.UserID).Scan(&live); err != nil || live != 0 {
		t.Fatalf("%d live sessions after the password change (%v)", live, err)
	}
}

// A registration begun by a session that another session's first factor
// then ends (a thief's, say, while the owner turns on an app) cannot be
// finished: the factor drops the ended session's ceremonies, and the
// finish checks again, under the user's lock, that its session is live.
// Before, the thief's key was stored after the owner was told the other
// sessions had ended.
func TestAnEndedSessionCannotFinishARegistration(t *testing.T) {
	t.Parallel()
	for _, whileWaiting := range []bool{false, true} {
		name := "after the first factor"
		if whileWaiting {
			name = "while the first factor holds the user's lock"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			ctx := context.Background()
			owner, _ := f.c.Session(t)
			thief, _ := f.c.Session(t)
			reg, err := f.s.BeginRegistration(ctx, f.c.UserID, f.c.ID, thief)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := f.auth.Create(reg.Options)
			if err != nil {
				t.Fatal(err)
			}
			e, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
			if err != nil {
				t.Fatal(err)
			}
			code, _ := CodeAt(e.Secret, f.clock())
			finish := func() error {
				_, _, err := f.s.FinishRegistration(ctx, f.c.UserID, thief, reg.Ceremony, "thief's key", resp)
				return err
			}
			var finishErr error
			if whileWaiting {
				// The thief's finish passed its challenge check and waits
				// for the user's lock, which the owner's factor holds.
				held, heldPID := hold(t, f.pg.Owner, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", f.c.UserID)
				done := make(chan error, 1)
				go func() { done <- finish() }()
				if _, err := blockedBy(t, f.pg.Owner, heldPID, done); err != nil {
					t.Fatalf("the finish did not wait for the user's lock: %v", err)
				}
				// The owner's factor: what ConfirmTOTP does under the lock.
				if _, err := held.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL", f.c.UserID, owner); err != nil {
					t.Fatal(err)
				}
				if _, err := held.Exec(ctx, "UPDATE mfa_totp SET confirmed_at = now() WHERE user_id = $1", f.c.UserID); err != nil {
					t.Fatal(err)
				}
				if err := held.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				finishErr = <-done
			} else {
				if _, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", owner); err != nil {
					t.Fatal(err)
				}
				finishErr = finish()
			}
			if !errors.Is(finishErr, ErrStepUpLost) && !errors.Is(finishErr, ErrChallenge) {
				t.Fatalf("the ended session's registration: %v, want it refused", finishErr)
			}
			var keys int
			if err := f.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM webauthn_credentials WHERE user_id = $1", f.c.UserID).Scan(&keys); err != nil || keys != 0 {
				t.Fatalf("%d security keys stored (%v), want none", keys, err)
			}
		})
	}
}

// A confirmation turns on the very seed its code was checked against: a
// new setup started meanwhile (another tab) replaces the seed, and the
// confirmation, waiting for the user's lock, then finds no setup of that
// seed instead of turning on one the user's app does not have.
func TestConfirmTurnsOnTheSeedItChecked(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	sid, _ := f.c.Session(t)
	first, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	code, _ := CodeAt(first.Secret, f.clock())
	held, heldPID := hold(t, f.pg.Owner, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", f.c.UserID)
	done := make(chan error, 1)
	go func() {
		_, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", sid)
		done <- err
	}()
	if _, err := blockedBy(t, f.pg.Owner, heldPID, done); err != nil {
		t.Fatalf("the confirmation did not wait for the user's lock: %v", err)
	}
	second, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrNoEnrolment) {
		t.Fatalf("confirming the replaced seed: %v, want ErrNoEnrolment", err)
	}
	var confirmed bool
	if err := f.pg.Owner.QueryRow(ctx, "SELECT confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = $1", f.c.UserID).Scan(&confirmed); err != nil || confirmed {
		t.Fatalf("the second seed (%s...) was turned on by a code of the first (%v)", second.Secret[:4], err)
	}
}

// A first factor ends the user's other sessions while a key may be being
// minted with one of them (holding its session's row, then FOR KEY SHARE
// on the user's by its foreign key): lockUser must let that through, or
// the two deadlock.
func TestAFirstFactorAndAMintWithAnotherSessionDoNotDeadlock(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	keep, _ := f.c.Session(t)
	other, _ := f.c.Session(t)
	e, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	code, _ := CodeAt(e.Secret, f.clock())
	mint, mintPID := hold(t, f.pg.Owner, "SELECT 1 FROM sessions WHERE id = $1 FOR SHARE", other)
	done := make(chan error, 1)
	go func() {
		_, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", keep)
		done <- err
	}()
	if _, err := blockedBy(t, f.pg.Owner, mintPID, done); err != nil {
		t.Fatalf("the first factor did not wait to end the other session: %v", err)
	}
	if _, err := mint.Exec(ctx, "SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE", f.c.UserID); err != nil {
		t.Fatalf("the mint's side: %v", err)
	}
	if err := mint.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the first factor: %v", err)
	}
}
