// Package stepup enforces the security posture's step-up rule: a sensitive
// action made with a session (creating or rotating a key, enrolling a
// server, deleting the account) needs a password verified on that session
// within the last five minutes. The dashboard answers 401 reauth_required
// by asking for the password, posting /auth/reauth, and replaying the
// request.
package stepup

import (
	"context"
	"errors"
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

// QueryRower is what Check needs from a pool or transaction.
type QueryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Check returns nil when id may take a sensitive action now: a session
// whose password was verified within session.ReauthWindow. Keys are not
// sessions and are judged by their scope at the edge; callers that only
// admit sessions check the kind themselves.
func Check(ctx context.Context, db QueryRower, id identity.Identity, now time.Time) (*problem.Problem, error) {
	if id.Kind != identity.KindSession {
		return nil, nil
	}
	at, err := session.ReauthAt(ctx, db, id.SessionID)
	if errors.Is(err, session.ErrNoSession) {
		return Required(), nil
	}
	if err != nil {
		return nil, err
	}
	if at.IsZero() || now.Sub(at) > session.ReauthWindow {
		return Required(), nil
	}
	return nil, nil
}
