package mfa

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/jackc/pgx/v5"
)

// ErrWebAuthnOff is returned when WebAuthn cannot work here: the public
// URL has no domain name (an IP address cannot be a relying party).
var ErrWebAuthnOff = errors.New("mfa: WebAuthn needs the site on a domain name")

// ErrNoCredentials is returned when a WebAuthn ceremony needs a credential
// of the user and there is none.
var ErrNoCredentials = errors.New("mfa: no security key registered")

// relyingParty returns the WebAuthn configuration for the public base URL
// (origin) and rpID ("" for the URL's host), or why there is none.
func relyingParty(publicURL, rpID string) (*webauthn.WebAuthn, error) {
	u, err := url.Parse(publicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("the public URL is not an absolute http(s) URL")
	}
	if rpID == "" {
		rpID = u.Hostname()
	}
	if err := protocol.ValidateRPID(rpID); err != nil {
		return nil, fmt.Errorf("relying party %q: %w", rpID, err)
	}
	if h := u.Hostname(); h != rpID && !strings.HasSuffix(h, "."+rpID) {
		return nil, fmt.Errorf("relying party %q is not %s or a parent domain of it", rpID, h)
	}
	return webauthn.New(&webauthn.Config{
		RPID:                  rpID,
		RPDisplayName:         "Guardian",
		RPOrigins:             []string{u.Scheme + "://" + u.Host},
		AttestationPreference: protocol.PreferNoAttestation,
		AuthenticatorSelection: protocol.AuthenticatorSelection{
			ResidentKey:      protocol.ResidentKeyRequirementDiscouraged,
			UserVerification: protocol.VerificationPreferred,
		},
		Timeouts: webauthn.TimeoutsConfig{
			Login:        webauthn.TimeoutConfig{Enforce: true, Timeout: ChallengeTTL, TimeoutUVD: ChallengeTTL},
			Registration: webauthn.TimeoutConfig{Enforce: true, Timeout: ChallengeTTL, TimeoutUVD: ChallengeTTL},
		},
	})
}

// waUser is a user as go-webauthn sees one. The user handle is the user's
// UUID (16 bytes, no personal data).
type waUser struct {
	handle []byte
	name   string
	creds  []webauthn.Credential
}

func (u *waUser) WebAuthnID() []byte                         { return u.handle }
func (u *waUser) WebAuthnName() string                       { return u.name }
func (u *waUser) WebAuthnDisplayName() string                { return u.name }
func (u *waUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

// userHandle is the 16 bytes of a UUID.
func userHandle(userID string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(userID, "-", ""))
	if err != nil || len(b) != 16 {
		return nil, fmt.Errorf("mfa: user id %q is not a UUID", userID)
	}
	return b, nil
}

// loadWAUser reads user's e-mail address and credentials.
func loadWAUser(ctx context.Context, q Querier, userID string) (*waUser, error) {
	handle, err := userHandle(userID)
	if err != nil {
		return nil, err
	}
	u := &waUser{handle: handle}
	if err := q.QueryRow(ctx, "SELECT email FROM users WHERE id = $1", userID).Scan(&u.name); err != nil {
		return nil, fmt.Errorf("mfa: read user: %w", err)
	}
	rows, err := q.Query(ctx, "SELECT credential FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at", userID)
	if err != nil {
		return nil, fmt.Errorf("mfa: read credentials: %w", err)
	}
	u.creds, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (webauthn.Credential, error) {
		var raw []byte
		var c webauthn.Credential
		if err := row.Scan(&raw); err != nil {
			return c, err
		}
		return c, json.Unmarshal(raw, &c)
	})
	if err != nil {
		return nil, fmt.Errorf("mfa: read credentials: %w", err)
	}
	return u, nil
}

// LoginOptions begins a WebAuthn assertion for challenge c (a login or
// reauth) and returns what navigator.credentials.get takes, as JSON
// ({"publicKey": {...}}). A later call replaces the ceremony of an
// earlier one.
func (s *Service) LoginOptions(ctx context.Context, c Challenge) (json.RawMessage, error) {
	if s.wa == nil {
		return nil, ErrWebAuthnOff
	}
	u, err := loadWAUser(ctx, s.db, c.UserID)
	if err != nil {
		return nil, err
	}
	if len(u.creds) == 0 {
		return nil, ErrNoCredentials
	}
	assertion, sd, err := s.wa.BeginLogin(u, webauthn.WithUserVerification(protocol.VerificationPreferred))
	if err != nil {
		return nil, fmt.Errorf("mfa: begin assertion: %w", err)
	}
	if err := s.saveCeremony(ctx, c.ID, sd); err != nil {
		return nil, err
	}
	return json.Marshal(assertion)
}

func (s *Service) saveCeremony(ctx context.Context, challengeID string, sd *webauthn.SessionData) error {
	raw, err := json.Marshal(sd)
	if err != nil {
		return err
	}
	tag, err := s.db.Exec(ctx, "UPDATE mfa_challenges SET webauthn = $2 WHERE id = $1 AND expires_at > $3", challengeID, raw, s.now())
	if err != nil {
		return fmt.Errorf("mfa: store ceremony: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return ErrChallenge
	}
	return nil
}

// verifyAssertion checks a WebAuthn assertion (the PublicKeyCredential of
// navigator.credentials.get, as JSON) against c's ceremony and returns the
// credential as it must be stored after this use.
func (s *Service) verifyAssertion(ctx context.Context, c Challenge, assertion []byte) (*webauthn.Credential, error) {
	if s.wa == nil {
		return nil, ErrWebAuthnOff
	}
	if len(c.webauthn) == 0 {
		return nil, errors.New("no ceremony begun")
	}
	var sd webauthn.SessionData
	if err := json.Unmarshal(c.webauthn, &sd); err != nil {
		return nil, err
	}
	return checkAssertion(s.wa, sd, assertion, func() (*waUser, error) { return loadWAUser(ctx, s.db, c.UserID) })
}

// checkAssertion checks assertion, the client's untrusted JSON, against
// the ceremony sd of wa for the user that user loads (only once the
// assertion parses, so that garbage costs no query).
func checkAssertion(wa *webauthn.WebAuthn, sd webauthn.SessionData, assertion []byte, user func() (*waUser, error)) (*webauthn.Credential, error) {
	parsed, err := protocol.ParseCredentialRequestResponseBytes(assertion)
	if err != nil {
		return nil, err
	}
	u, err := user()
	if err != nil {
		return nil, err
	}
	cred, err := wa.ValidateLogin(u, sd, parsed)
	if err != nil {
		return nil, err
	}
	if cred.Authenticator.CloneWarning {
		return nil, errors.New("signature counter did not advance: possibly a cloned authenticator")
	}
	return cred, nil
}

// Registration is a WebAuthn registration begun for a signed-in user.
type Registration struct {
	// Ceremony is the token to send back with the new credential.
	Ceremony string `json:"ceremony"`
	// Options are what navigator.credentials.create takes, as JSON
	// ({"publicKey": {...}}).
	Options json.RawMessage `json:"options"`
	// ExpiresAt is when the ceremony expires.
	ExpiresAt time.Time `json:"expires_at"`
}

// BeginRegistration starts registering a new credential for the user of
// a session. Credentials the user has already are excluded, so one
// authenticator is registered once.
func (s *Service) BeginRegistration(ctx context.Context, userID, customerID, sessionID string) (Registration, error) {
	if s.wa == nil {
		return Registration{}, ErrWebAuthnOff
	}
	u, err := loadWAUser(ctx, s.db, userID)
	if err != nil {
		return Registration{}, err
	}
	now := s.now()
	token, expires, err := NewChallenge(ctx, s.db, Challenge{UserID: userID, CustomerID: customerID, Purpose: PurposeRegister, SessionID: sessionID}, now)
	if err != nil {
		return Registration{}, err
	}
	c, err := s.Challenge(ctx, token, PurposeRegister, sessionID)
	if err != nil {
		return Registration{}, err
	}
	creation, sd, err := s.wa.BeginRegistration(u, webauthn.WithExclusions(webauthn.Credentials(u.creds).CredentialDescriptors()))
	if err != nil {
		return Registration{}, fmt.Errorf("mfa: begin registration: %w", err)
	}
	if err := s.saveCeremony(ctx, c.ID, sd); err != nil {
		return Registration{}, err
	}
	opts, err := json.Marshal(creation)
	if err != nil {
		return Registration{}, err
	}
	return Registration{Ceremony: token, Options: opts, ExpiresAt: expires}, nil
}

// Credential is a registered WebAuthn credential as the user sees it.
type Credential struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

// MaxNameLen bounds a credential's name, in bytes.
const MaxNameLen = 100

// ErrBadCredential is returned for a registration response that does not
// verify; the wrapped error says why, for logs.
var ErrBadCredential = errors.New("mfa: the new credential did not verify")

// FinishRegistration verifies the authenticator's answer (the
// PublicKeyCredential of navigator.credentials.create, as JSON) to the
// ceremony and stores the credential under name. If it is the user's
// first factor, the user's recovery codes come back with it (shown once)
// and every session but sessionID ends (FirstFactor; nil otherwise).
func (s *Service) FinishRegistration(ctx context.Context, userID, sessionID, ceremony, name string, response []byte) (Credential, *FirstFactor, error) {
	if s.wa == nil {
		return Credential{}, nil, ErrWebAuthnOff
	}
	c, err := s.Challenge(ctx, ceremony, PurposeRegister, sessionID)
	if err != nil {
		return Credential{}, nil, err
	}
	if c.UserID != userID || len(c.webauthn) == 0 {
		return Credential{}, nil, ErrChallenge
	}
	var sd webauthn.SessionData
	if err := json.Unmarshal(c.webauthn, &sd); err != nil {
		return Credential{}, nil, err
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(response)
	if err != nil {
		return Credential{}, nil, fmt.Errorf("%w: %w", ErrBadCredential, err)
	}
	u, err := loadWAUser(ctx, s.db, userID)
	if err != nil {
		return Credential{}, nil, err
	}
	cred, err := s.wa.CreateCredential(u, sd, parsed)
	if err != nil {
		return Credential{}, nil, fmt.Errorf("%w: %w", ErrBadCredential, err)
	}
	// Transports are hints the browser sends outside anything signed;
	// unknown ones are to be ignored (WebAuthn §5.8.4), so only known
	// ones are kept.
	cred.Transport = slices.DeleteFunc(cred.Transport, func(t protocol.AuthenticatorTransport) bool { return !knownTransports[t] })
	raw, err := json.Marshal(cred)
	if err != nil {
		return Credential{}, nil, err
	}
	// Other strings of the credential came from the client too; jsonb
	// refuses a NUL (as \u0000), which would read as an outage.
	if bytes.Contains(raw, []byte(`\u0000`)) {
		return Credential{}, nil, fmt.Errorf("%w: a NUL character in the credential", ErrBadCredential)
	}
	out := Credential{Name: name}
	var first *FirstFactor
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// The user's lock before the challenge's: a password change takes
		// the user's and then drops other sessions' challenges.
		if err := lockUser(ctx, tx, userID); err != nil {
			return err
		}
		if err := s.stillAdmitted(ctx, tx, sessionID); err != nil {
			return err
		}
		if err := consumeChallenge(ctx, tx, c.ID); err != nil {
			return err
		}
		f, err := Enrolled(ctx, tx, userID)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `INSERT INTO webauthn_credentials (user_id, credential_id, name, credential, created_at)
			VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at`, userID, cred.ID, name, raw, s.now()).Scan(&out.ID, &out.CreatedAt)
		if err != nil {
			return err
		}
		if !f.Any() && f.RecoveryCodes == 0 {
			first, err = s.firstFactor(ctx, tx, userID, sessionID)
		}
		return err
	})
	if isUniqueViolation(err) {
		return Credential{}, nil, fmt.Errorf("%w: this authenticator is registered already", ErrBadCredential)
	}
	if err != nil {
		return Credential{}, nil, err
	}
	return out, first, nil
}

// consumeChallenge deletes challenge id, or returns ErrChallenge if another
// request used it first.
func consumeChallenge(ctx context.Context, tx pgx.Tx, id string) error {
	tag, err := tx.Exec(ctx, "DELETE FROM mfa_challenges WHERE id = $1", id)
	if err != nil {
		return fmt.Errorf("mfa: use challenge: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return ErrChallenge
	}
	return nil
}

// knownTransports are the authenticator transports WebAuthn Level 3 names.
var knownTransports = map[protocol.AuthenticatorTransport]bool{
	protocol.USB: true, protocol.NFC: true, protocol.BLE: true, protocol.SmartCard: true, protocol.Hybrid: true, protocol.Internal: true,
}
