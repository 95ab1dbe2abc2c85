// Package stepup enforces the security posture's step-up rule: a sensitive
// action made with a session (creating or rotating a key, enrolling a
// server, deleting the account, changing second factors, ending another
// session) needs a password
// verified on that session within the last five minutes, and, when the
// user has a second factor (shared/mfa), a session whose authentication
// used it (assurance level 2). The dashboard answers 401 reauth_required
// by asking for the password (and then the second factor), posting
// /auth/reauth (and /auth/reauth/mfa), and replaying the request.
package stepup

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
)

// Required is the problem a session gets when it must re-authenticate.
func Required() *problem.Problem {
	return problem.New(http.StatusUnauthorized, "reauth_required",
		"confirm your password (POST /auth/reauth), then send this request again")
}

// RequiredWithSecondFactor is the problem a session of a user with a
// second factor gets when it must re-authenticate.
func RequiredWithSecondFactor() *problem.Problem {
	p := problem.New(http.StatusUnauthorized, "reauth_required",
		"confirm your password (POST /auth/reauth) and your second factor (POST /auth/reauth/mfa), then send this request again")
	p.Extra = map[string]any{"second_factor": true}
	return p
}

// QueryRower is what Check needs from a pool or transaction.
type QueryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// state is what Check needs of a session: when its credentials were last
// verified, with what assurance, and whether its user has a second factor.
const state = `SELECT s.reauth_at, s.aal,
	EXISTS (SELECT 1 FROM mfa_totp t WHERE t.user_id = s.user_id AND t.confirmed_at IS NOT NULL)
	OR EXISTS (SELECT 1 FROM webauthn_credentials w WHERE w.user_id = s.user_id)
FROM sessions s WHERE s.id = $1 AND s.revoked_at IS NULL`

// Check returns nil when id may take a sensitive action now: a session
// whose password was verified within session.ReauthWindow, with a second
// factor if its user has one. Keys are not sessions and are judged by their
// scope at the edge; callers that only admit sessions check the kind
// themselves.
func Check(ctx context.Context, db QueryRower, id identity.Identity, now time.Time) (*problem.Problem, error) {
	return check(ctx, db, id, now, false)
}

// Admit is Check for a handler: it answers w and returns false unless id
// may take the sensitive action now, with the problem Check gives, or
// through fail when the session's state cannot be read.
func Admit(w http.ResponseWriter, r *http.Request, db QueryRower, id identity.Identity, now time.Time, fail func(http.ResponseWriter, error)) bool {
	p, err := Check(r.Context(), db, id, now)
	if err != nil {
		fail(w, err)
		return false
	}
	if p != nil {
		problem.Write(w, p)
		return false
	}
	return true
}

// CheckIfSecondFactor is Check for users who have a second factor and nil
// for those who do not: for an action that needs the factor when there is
// one but is otherwise guarded by other means (changing the password,
// which asks for the current one).
func CheckIfSecondFactor(ctx context.Context, db QueryRower, id identity.Identity, now time.Time) (*problem.Problem, error) {
	return check(ctx, db, id, now, true)
}

func check(ctx context.Context, db QueryRower, id identity.Identity, now time.Time, onlyWithFactor bool) (*problem.Problem, error) {
	if id.Kind != identity.KindSession {
		return nil, nil
	}
	var at *time.Time
	var aal int
	var hasFactor bool
	err := db.QueryRow(ctx, state, id.SessionID).Scan(&at, &aal, &hasFactor)
	if errors.Is(err, pgx.ErrNoRows) {
		return Required(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("stepup: %w", err)
	}
	if onlyWithFactor && !hasFactor {
		return nil, nil
	}
	if hasFactor && aal < session.AAL2 {
		return RequiredWithSecondFactor(), nil
	}
	if at == nil || !session.Fresh(*at, now) {
		if hasFactor {
			return RequiredWithSecondFactor(), nil
		}
		return Required(), nil
	}
	return nil, nil
}

// Ended is the problem for a request whose session ended while it ran
// (ErrSessionEnded): nothing was done, and the session is gone.
func Ended() *problem.Problem {
	return problem.New(http.StatusUnauthorized, "session_ended", "this session was signed out while the request ran; nothing was done, sign in again")
}

// ErrSessionEnded is returned by LockSession when the caller's session was
// revoked, or expired, while its request ran.
var ErrSessionEnded = errors.New("stepup: the session ended while the request ran")

// LockSession takes, in tx, a share lock on the caller's session row, and
// returns ErrSessionEnded if the session has ended. A sensitive action
// calls it in the transaction that makes the change, so that it commits
// only while its session is live: a revocation committed first (signing
// out everywhere, a first factor, a password change) stops it, and one
// committed later waits for it. Check, run before, cannot see a revocation
// that commits while the request runs. Callers that are not sessions take
// no lock.
func LockSession(ctx context.Context, tx pgx.Tx, id identity.Identity) error {
	if id.Kind != identity.KindSession {
		return nil
	}
	var live bool
	err := tx.QueryRow(ctx, "SELECT true FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() FOR SHARE", id.SessionID).Scan(&live)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrSessionEnded
	}
	if err != nil {
		return fmt.Errorf("stepup: lock the session: %w", err)
	}
	return nil
}
