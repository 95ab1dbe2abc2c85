package session_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/account"
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
