// Package session issues and verifies dashboard sessions: an HS256 JWT in
// the guardian_token cookie that names a server-side session row, so one
// session, or all of a user's others, can be revoked; changing the signing
// secret ends every session at once.
package session

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// CookieName is the session cookie's name.
const CookieName = "guardian_token"

// Lifetime of a session.
const Lifetime = 7 * 24 * time.Hour

const (
	issuer   = "guardian"
	audience = "guardian-dashboard"
	// leeway absorbs clock skew between Caddy instances.
	leeway = 5 * time.Second
	// MaxTokenLen bounds what Verify will look at; real tokens are ~400 bytes.
	MaxTokenLen = 4096
)

// ErrInvalid is returned for every token that must not be accepted; the
// wrapped error says why, for logs only.
var ErrInvalid = errors.New("session token invalid")

// Claims are what a session token says.
type Claims struct {
	// CustomerID is the user's customer.
	CustomerID string `json:"cid"`
	jwt.RegisteredClaims
}

// SessionID is the session row the token names.
func (c *Claims) SessionID() string { return c.ID }

// UserID is the signed-in user.
func (c *Claims) UserID() string { return c.Subject }

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Issue signs a token for session sessionID of user userID in customer
// customerID, valid from issued until expires.
func Issue(secret []byte, sessionID, userID, customerID string, issued, expires time.Time) (string, error) {
	if len(secret) < 32 {
		return "", errors.New("session: signing secret shorter than 32 bytes")
	}
	c := Claims{
		CustomerID: customerID,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    issuer,
			Audience:  jwt.ClaimStrings{audience},
			Subject:   userID,
			ID:        sessionID,
			IssuedAt:  jwt.NewNumericDate(issued),
			NotBefore: jwt.NewNumericDate(issued),
			ExpiresAt: jwt.NewNumericDate(expires),
		},
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("session: sign: %w", err)
	}
	return tok, nil
}

// Verify checks token's signature (HS256 only: "none", RS*, ES* and every
// other algorithm are refused), issuer, audience, validity window and the
// shape of its ids, as of now.
func Verify(secret []byte, token string, now time.Time) (*Claims, error) {
	if token == "" || len(token) > MaxTokenLen {
		return nil, fmt.Errorf("%w: empty or oversized", ErrInvalid)
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(issuer),
		jwt.WithAudience(audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	var c Claims
	_, err := p.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return secret, nil })
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// Every token Issue signs has both; a token without them is not one
	// of ours, whatever signed it.
	if c.NotBefore == nil {
		return nil, fmt.Errorf("%w: no nbf", ErrInvalid)
	}
	if c.IssuedAt == nil {
		return nil, fmt.Errorf("%w: no iat", ErrInvalid)
	}
	if !uuidRE.MatchString(c.ID) || !uuidRE.MatchString(c.Subject) || !uuidRE.MatchString(c.CustomerID) {
		return nil, fmt.Errorf("%w: malformed ids", ErrInvalid)
	}
	return &c, nil
}

// ValidAt reports whether claims that verified earlier are still within
// their validity window at now (for callers that cache verified tokens).
func (c *Claims) ValidAt(now time.Time) bool {
	return c.ExpiresAt != nil && c.NotBefore != nil &&
		now.Before(c.ExpiresAt.Add(leeway)) && !now.Before(c.NotBefore.Add(-leeway))
}

// Cookie returns the session cookie for token: HttpOnly, Secure,
// SameSite=Lax, Path=/, Domain as configured ("" for a host-only cookie,
// as on localhost), living as long as the session.
func Cookie(token, domain string, expires time.Time, now time.Time) *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    token,
		Path:     "/",
		Domain:   domain,
		MaxAge:   int(expires.Sub(now).Round(time.Second).Seconds()),
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}

// ClearCookie returns a cookie that deletes the session cookie.
func ClearCookie(domain string) *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    "",
		Path:     "/",
		Domain:   domain,
		MaxAge:   -1,
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}
