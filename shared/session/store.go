package session

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/pgtext"
	"github.com/glassmkr/guardian/shared/plan"
)

// ReauthWindow is how recently a password must have been verified on a
// session for sensitive actions (creating or rotating keys).
const ReauthWindow = 5 * time.Minute

// reauthAhead is how far in the checker's future a confirmation may lie
// and still count: the clocks of the hosts that wrote and read it may
// differ a little, but one far ahead (a clock stepped back since) would
// otherwise stretch the window by as much.
const reauthAhead = time.Minute

// Fresh reports whether a confirmation made at at is within ReauthWindow
// of now, and not more than a minute after it.
func Fresh(at, now time.Time) bool {
	age := now.Sub(at)
	return age <= ReauthWindow && age >= -reauthAhead
}

// Assurance levels a session records (sessions.aal): how strongly the
// authentication that made it proved who the user is.
const (
	// AAL1: a password, or a Google sign-in, alone.
	AAL1 = 1
	// AAL2: that plus a second factor (TOTP, a security key or a
	// recovery code; see shared/mfa).
	AAL2 = 2
)

// Issued is a new session and its token.
type Issued struct {
	ID      string
	Token   string
	Expires time.Time
}

// Params describe the session Start makes.
type Params struct {
	UserID, CustomerID string
	// IP and UserAgent are the client's, as the edge saw them.
	IP, UserAgent string
	// Reauthed marks the user's credentials as just verified (a sign-in
	// with a password, a re-auth): sensitive actions are allowed for
	// ReauthWindow.
	Reauthed bool
	// ReauthAt is when those credentials were verified, if that was before
	// now: a second factor answered minutes after the password leaves the
	// session ReauthWindow from the password, not from the answer. Zero
	// means now.
	ReauthAt time.Time
	// AAL is the assurance level of the authentication (AAL1 if zero).
	AAL int
	// Replacing, when not "", is the session the request came with, to
	// end in the same transaction (a fresh token on every sign-in and
	// re-auth). It may be another user's: a browser that signs in as
	// someone else loses the old cookie, and its session must not stay
	// valid behind it. The edge verified it, so it is the caller's to end.
	Replacing string
	// PasswordHash, when not "", is the password hash the sign-in verified:
	// Start refuses (ErrPasswordChanged) if it is no longer the user's.
	PasswordHash string
}

// Refusals of Start for a sign-in overtaken by a change of the user's
// credentials: a password change or a first second factor, committed while
// the sign-in was under way, ends the user's sessions and must not be
// outlived by one started on what it replaced.
var (
	// ErrPasswordChanged: the password verified is no longer the user's.
	ErrPasswordChanged = errors.New("session: the password changed during the sign-in")
	// ErrSecondFactor: an assurance level 1 session for a user who has a
	// second factor now; the sign-in must ask for it.
	ErrSecondFactor = errors.New("session: the user has a second factor the sign-in did not use")
)

// Start creates a session row as p describes and signs its token. It
// takes Lock's locks and then refuses an account scheduled for deletion
// (account.ErrClosing), a password that is no longer the user's
// (ErrPasswordChanged, when p.PasswordHash is set), and an assurance level
// 1 session for a user who has a second factor (ErrSecondFactor): a
// sign-in that read any of these before the change committed would
// otherwise add a session the change never ended. Past
// plan.MaxSessionsPerUser open sessions, the user's least recently used
// are ended. The caller's role needs what Lock needs, SELECT on mfa_totp
// and webauthn_credentials, and UPDATE on sessions.revoked_at.
func Start(ctx context.Context, tx pgx.Tx, secret []byte, p Params, now time.Time) (Issued, error) {
	hash, err := Lock(ctx, tx, p.CustomerID, p.UserID)
	if err != nil {
		return Issued{}, err
	}
	if p.PasswordHash != "" && subtle.ConstantTimeCompare([]byte(p.PasswordHash), []byte(hash)) != 1 {
		return Issued{}, ErrPasswordChanged
	}
	aal := p.AAL
	if aal == 0 {
		aal = AAL1
	}
	if aal != AAL1 && aal != AAL2 {
		return Issued{}, fmt.Errorf("session: assurance level %d", aal)
	}
	if aal == AAL1 {
		if err := refuseSecondFactor(ctx, tx, p.UserID); err != nil {
			return Issued{}, err
		}
	}
	expires := now.Add(Lifetime)
	var reauthAt *time.Time
	if p.Reauthed {
		at := now
		if !p.ReauthAt.IsZero() && p.ReauthAt.Before(now) {
			at = p.ReauthAt
		}
		reauthAt = &at
	}
	var addr *netip.Addr
	if a, err := netip.ParseAddr(p.IP); err == nil {
		a = a.Unmap()
		addr = &a
	}
	userAgent := pgtext.Clean(p.UserAgent, 512) // else a Latin-1 user agent could not sign in
	// The session this one replaces ends first, before the insert's
	// trigger (0035) takes its locks: fewer locks held while it waits.
	if p.Replacing != "" {
		if _, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", p.Replacing, now); err != nil {
			return Issued{}, fmt.Errorf("session: end the old one: %w", err)
		}
	}
	var id string
	err = tx.QueryRow(ctx, `INSERT INTO sessions (user_id, customer_id, created_at, expires_at, last_seen_at, reauth_at, source_ip, user_agent, aal)
		VALUES ($1, $2, $3, $4, $3, $5, $6, $7, $8) RETURNING id`, p.UserID, p.CustomerID, now, expires, reauthAt, addr, userAgent, aal).Scan(&id)
	if err != nil {
		return Issued{}, fmt.Errorf("session: create: %w", err)
	}
	if _, err := tx.Exec(ctx, endLeastUsed, p.UserID, id, now, plan.MaxSessionsPerUser-1); err != nil {
		return Issued{}, fmt.Errorf("session: end the least used past the bound: %w", err)
	}
	token, err := Issue(secret, id, p.UserID, p.CustomerID, now, expires)
	if err != nil {
		return Issued{}, err
	}
	return Issued{ID: id, Token: token, Expires: expires}, nil
}

// endLeastUsed ends the user's open sessions other than the new one ($2)
// past the newest $4 by last use: with the new one, the user keeps
// plan.MaxSessionsPerUser. Sign-ins of one user hold its row shared, so
// two at once may each keep the other's; the next sign-in trims again.
// Rows another transaction holds are skipped, not waited for: ending
// other sessions updates many of the user's rows in no set order, and a
// sign-in waiting for one of them while holding the session it replaces
// could deadlock with it (those rows are being ended anyway).
// The candidates are chosen first and only they are locked: a locking
// clause under the OFFSET would also lock the sessions kept.
const endLeastUsed = `UPDATE sessions SET revoked_at = $3 WHERE id IN (
	SELECT id FROM sessions WHERE id IN (
		SELECT id FROM sessions WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL AND expires_at > $3
		ORDER BY last_seen_at DESC, created_at DESC, id OFFSET $4)
	FOR NO KEY UPDATE SKIP LOCKED) AND revoked_at IS NULL`

// Lock takes, for tx, the locks Start takes, in its order, and returns the
// user's password hash ("" if none): the customer row (account.LockOpen;
// account.ErrClosing if the account is scheduled for deletion or the user
// is gone), then the user's row, shared. A password change or a first
// second factor locks that row for update before ending the user's
// sessions, so a sign-in and it wait for each other, and what tx reads
// after Lock is what they committed. A transaction that must lock other
// rows before starting a session (the second step consumes its
// challenge) calls Lock first: holding one a password change deletes
// while waiting here would deadlock with it. The caller's role needs what
// account.LockOpen needs and UPDATE on a column of users (FOR SHARE asks
// for it).
func Lock(ctx context.Context, tx pgx.Tx, customerID, userID string) (string, error) {
	if err := account.LockOpen(ctx, tx, customerID); err != nil {
		return "", err
	}
	var hash string
	err := tx.QueryRow(ctx, "SELECT coalesce(password_hash, '') FROM users WHERE id = $1 AND customer_id = $2 FOR SHARE", userID, customerID).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", account.ErrClosing
	}
	if err != nil {
		return "", fmt.Errorf("session: lock the user: %w", err)
	}
	return hash, nil
}

// hasSecondFactor is mfa.Factors.Any as SQL (shared/mfa imports this
// package). Run as its own statement after Lock, it sees a factor
// committed while Lock waited.
const hasSecondFactor = `SELECT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL)
	OR EXISTS (SELECT 1 FROM webauthn_credentials WHERE user_id = $1)`

func refuseSecondFactor(ctx context.Context, tx pgx.Tx, userID string) error {
	var has bool
	if err := tx.QueryRow(ctx, hasSecondFactor, userID).Scan(&has); err != nil {
		return fmt.Errorf("session: read second factors: %w", err)
	}
	if has {
		return ErrSecondFactor
	}
	return nil
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
