// Package account holds what functions that mint credentials need to know
// of a customer account's state.
package account

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// ErrClosing reports that the account is scheduled for deletion, or gone.
var ErrClosing = errors.New("account: scheduled for deletion")

// LockOpen takes a share lock on the customer row for the transaction and
// returns ErrClosing if the account is scheduled for deletion. Account
// deletion updates that row, so it waits for tx and then revokes what tx
// minted too; whatever comes after the deletion is refused here. The
// caller's role needs SELECT on customers' id and deletion_requested_at
// and UPDATE on some column (FOR SHARE asks for it).
func LockOpen(ctx context.Context, tx pgx.Tx, customerID string) error {
	var closing bool
	err := tx.QueryRow(ctx, "SELECT deletion_requested_at IS NOT NULL FROM customers WHERE id = $1 FOR SHARE", customerID).Scan(&closing)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && closing) {
		return ErrClosing
	}
	return err
}
