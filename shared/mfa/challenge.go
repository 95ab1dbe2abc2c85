package mfa

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ChallengeTTL is how long a challenge waits for its second factor.
const ChallengeTTL = 5 * time.Minute

// Purposes of a challenge.
const (
	PurposeLogin    = "login"
	PurposeReauth   = "reauth"
	PurposeRegister = "register"
)

// First factors a challenge may follow.
const (
	MethodPassword = "password"
	MethodGoogle   = "google"
)

// tokenLen is a challenge token's length: 32 bytes in unpadded base64url.
const tokenLen = 43

// ErrChallenge is returned for a challenge token that is unknown,
// expired, already used, or not for this purpose, user or session.
var ErrChallenge = errors.New("mfa: no such challenge, or it expired or was used")

// Querier is what the package needs of a pool or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Challenge is a sign-in, re-auth or registration waiting for a second
// factor.
type Challenge struct {
	ID         string
	UserID     string
	CustomerID string
	Purpose    string
	// SessionID: for reauth and register, the session it belongs to; for
	// login, the session a completed sign-in replaces ("" if none).
	SessionID string
	// Method is the first factor: MethodPassword or MethodGoogle.
	Method string
	// Reauthed: the session a completed login or reauth starts counts as
	// re-authenticated.
	Reauthed bool
	// VerifiedAt is when the first factor was verified (a password's check,
	// a provider's auth_time); NewChallenge takes zero as now. A completed
	// challenge's session counts as re-authenticated from then.
	VerifiedAt time.Time
	ExpiresAt  time.Time

	webauthn []byte // go-webauthn SessionData as JSON, once a ceremony began
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// NewChallenge stores c and returns its token, for the client to present
// with the second factor, and when it expires. It needs no secret, so any
// function that signs people in can call it in its own transaction.
func NewChallenge(ctx context.Context, q Querier, c Challenge, now time.Time) (string, time.Time, error) {
	switch c.Purpose {
	case PurposeLogin, PurposeReauth, PurposeRegister:
	default:
		return "", time.Time{}, fmt.Errorf("mfa: challenge purpose %q", c.Purpose)
	}
	if c.Method == "" {
		c.Method = MethodPassword
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", time.Time{}, err
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	expires := now.Add(ChallengeTTL)
	var session any
	if c.SessionID != "" {
		session = c.SessionID
	}
	// Expired challenges are worthless; sweep them as new ones come.
	if _, err := q.Exec(ctx, "DELETE FROM mfa_challenges WHERE expires_at < $1", now); err != nil {
		return "", time.Time{}, fmt.Errorf("mfa: sweep challenges: %w", err)
	}
	verified := c.VerifiedAt
	if verified.IsZero() || verified.After(now) {
		verified = now
	}
	_, err := q.Exec(ctx, `INSERT INTO mfa_challenges (token_hash, user_id, customer_id, purpose, session_id, method, reauthed, created_at, expires_at, verified_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, hashToken(token), c.UserID, c.CustomerID, c.Purpose, session, c.Method, c.Reauthed, now, expires, verified)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("mfa: store challenge: %w", err)
	}
	return token, expires, nil
}

const challengeByToken = `SELECT id, user_id, customer_id, purpose, coalesce(session_id::text, ''), method, reauthed, coalesce(verified_at, created_at), expires_at, webauthn
FROM mfa_challenges WHERE token_hash = $1 AND expires_at > $2`

// Challenge returns the live challenge of token for purpose. For reauth
// and register, sessionID must be the challenge's session.
func (s *Service) Challenge(ctx context.Context, token, purpose, sessionID string) (Challenge, error) {
	var c Challenge
	if len(token) != tokenLen {
		return c, ErrChallenge
	}
	err := s.db.QueryRow(ctx, challengeByToken, hashToken(token), s.now()).Scan(
		&c.ID, &c.UserID, &c.CustomerID, &c.Purpose, &c.SessionID, &c.Method, &c.Reauthed, &c.VerifiedAt, &c.ExpiresAt, &c.webauthn)
	if errors.Is(err, pgx.ErrNoRows) {
		return Challenge{}, ErrChallenge
	}
	if err != nil {
		return Challenge{}, fmt.Errorf("mfa: read challenge: %w", err)
	}
	if c.Purpose != purpose || (purpose != PurposeLogin && c.SessionID != sessionID) {
		return Challenge{}, ErrChallenge
	}
	return c, nil
}

// CookieName is the cookie that carries a sign-in's challenge token in
// browsers.
const CookieName = "guardian_mfa"

// Cookie returns the challenge cookie: HttpOnly, Secure, SameSite=Strict,
// sent only to /auth/, living as long as the challenge.
func Cookie(token string, expires, now time.Time) *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    token,
		Path:     "/auth/",
		MaxAge:   max(1, int(expires.Sub(now).Seconds())),
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteStrictMode,
	}
}

// ClearCookie deletes the challenge cookie.
func ClearCookie() *http.Cookie {
	c := Cookie("", time.Time{}, time.Time{})
	c.MaxAge = -1
	return c
}

// TokenOf is the challenge token of a request: the one in its body if
// any, else the cookie's.
func TokenOf(r *http.Request, fromBody string) string {
	if fromBody != "" {
		return fromBody
	}
	if c, err := r.Cookie(CookieName); err == nil {
		return c.Value
	}
	return ""
}
