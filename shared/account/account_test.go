package account_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestLockOpen(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	lock := func(id string) error {
		var got error
		if err := pgx.BeginFunc(ctx, pg.Owner, func(tx pgx.Tx) error { got = account.LockOpen(ctx, tx, id); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := lock(c.ID); err != nil {
		t.Fatalf("an open account: %v", err)
	}
	if err := lock("00000000-0000-4000-8000-000000000000"); !errors.Is(err, account.ErrClosing) {
		t.Fatalf("no such account: %v", err)
	}
	if _, err := pg.Owner.Exec(ctx, "UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '29 days' WHERE id = $1", c.ID); err != nil {
		t.Fatal(err)
	}
	if err := lock(c.ID); !errors.Is(err, account.ErrClosing) {
		t.Fatalf("an account scheduled for deletion: %v", err)
	}
}
