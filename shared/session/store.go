package session

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReauthWindow is how recently a password must have been verified on a
// session for sensitive actions (creating or rotating keys).
const ReauthWindow = 5 * time.Minute

// Issued is a new session and its token.
type Issued struct {
	ID      string
	Token   string
	Expires time.Time
}

// Start creates a session row for user (of customer) and signs its token.
// reauthed marks the password as just verified (sign-in with a password);
// replacing, when not "", is a session of the same user to end in the
// same transaction (a fresh token on every sign-in and re-auth).
func Start(ctx context.Context, tx pgx.Tx, secret []byte, userID, customerID, ip, userAgent string, reauthed bool, replacing string, now time.Time) (Issued, error) {
	expires := now.Add(Lifetime)
	var reauthAt *time.Time
	if reauthed {
		reauthAt = &now
	}
	var addr *netip.Addr
	if a, err := netip.ParseAddr(ip); err == nil {
		a = a.Unmap()
		addr = &a
	}
	if len(userAgent) > 512 {
		userAgent = userAgent[:512]
	}
	var id string
	err := tx.QueryRow(ctx, `INSERT INTO sessions (user_id, customer_id, created_at, expires_at, last_seen_at, reauth_at, source_ip, user_agent)
		VALUES ($1, $2, $3, $4, $3, $5, $6, $7) RETURNING id`, userID, customerID, now, expires, reauthAt, addr, userAgent).Scan(&id)
	if err != nil {
		return Issued{}, fmt.Errorf("session: create: %w", err)
	}
	if replacing != "" {
		if _, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL", replacing, userID, now); err != nil {
			return Issued{}, fmt.Errorf("session: end the old one: %w", err)
		}
	}
	token, err := Issue(secret, id, userID, customerID, now, expires)
	if err != nil {
		return Issued{}, err
	}
	return Issued{ID: id, Token: token, Expires: expires}, nil
}

// ErrNoSession is returned for a session that is gone or revoked.
var ErrNoSession = errors.New("session: not found or revoked")

// ReauthAt returns when the password was last verified on session id
// (zero if never).
func ReauthAt(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, id string) (time.Time, error) {
	var at *time.Time
	err := db.QueryRow(ctx, "SELECT reauth_at FROM sessions WHERE id = $1 AND revoked_at IS NULL", id).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, ErrNoSession
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("session: %w", err)
	}
	if at == nil {
		return time.Time{}, nil
	}
	return *at, nil
}
