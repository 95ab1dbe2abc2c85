package mfa

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/session"
)

// Config configures New.
type Config struct {
	// Secret is GUARDIAN_MFA_SECRET (at least MinSecretLen bytes): TOTP
	// seeds are sealed and recovery codes hashed under keys derived from it.
	Secret []byte
	// PublicURL is the site's public base URL (GUARDIAN_URL): WebAuthn's
	// origin, and its relying party unless RPID is set. WebAuthn is off
	// when it is empty or its host is an IP address.
	PublicURL string
	// RPID overrides the WebAuthn relying party (a parent domain of the
	// URL's host).
	RPID string
	// Issuer names the site in authenticator apps. Default "Guardian".
	Issuer string
	// Limits bound second-factor attempts (DefaultLimits for zero fields).
	Limits Limits
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Service verifies, enrols and removes second factors.
type Service struct {
	db     *pgxpool.Pool
	keys   *keys
	wa     *webauthn.WebAuthn
	waOff  error
	issuer string
	limits Limits
	now    func() time.Time
}

// New returns a Service on db. A configuration under which WebAuthn
// cannot work is not an error: WebAuthn is off (see WebAuthnOff) and TOTP
// still works.
func New(db *pgxpool.Pool, cfg Config) (*Service, error) {
	k, err := newKeys(cfg.Secret)
	if err != nil {
		return nil, err
	}
	s := &Service{db: db, keys: k, issuer: cfg.Issuer, limits: cfg.Limits.withDefaults(), now: cfg.Now}
	if s.issuer == "" {
		s.issuer = "Guardian"
	}
	if s.now == nil {
		s.now = time.Now
	}
	if cfg.PublicURL == "" {
		s.waOff = errors.New("no public URL configured")
	} else if s.wa, err = relyingParty(cfg.PublicURL, cfg.RPID); err != nil {
		s.wa, s.waOff = nil, err
	}
	return s, nil
}

// WebAuthnOff returns why WebAuthn is off, or nil when it works.
func (s *Service) WebAuthnOff() error { return s.waOff }

// Factors are the second factors a user has.
type Factors struct {
	TOTP          bool // a confirmed authenticator app
	WebAuthn      int  // registered credentials
	RecoveryCodes int  // unused recovery codes
}

// Any reports whether the user has a second factor: a sign-in needs one,
// and sensitive actions need a session that used one.
func (f Factors) Any() bool { return f.TOTP || f.WebAuthn > 0 }

// Methods lists what the user may present: "totp", "webauthn",
// "recovery_code".
func (f Factors) Methods() []string {
	var m []string
	if f.TOTP {
		m = append(m, "totp")
	}
	if f.WebAuthn > 0 {
		m = append(m, "webauthn")
	}
	if f.Any() && f.RecoveryCodes > 0 {
		m = append(m, "recovery_code")
	}
	return m
}

const factorsQuery = `SELECT
	EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL),
	(SELECT count(*) FROM webauthn_credentials WHERE user_id = $1),
	(SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL)`

// Enrolled returns the factors of user. It needs no secret: any function
// that signs people in can ask.
func Enrolled(ctx context.Context, q Querier, userID string) (Factors, error) {
	var f Factors
	if err := q.QueryRow(ctx, factorsQuery, userID).Scan(&f.TOTP, &f.WebAuthn, &f.RecoveryCodes); err != nil {
		return f, fmt.Errorf("mfa: read factors: %w", err)
	}
	return f, nil
}

// Methods returns what user may present now: WebAuthn is left out while
// it is off here.
func (s *Service) Methods(ctx context.Context, userID string) (Factors, []string, error) {
	f, err := Enrolled(ctx, s.db, userID)
	if err != nil {
		return f, nil, err
	}
	m := f.Methods()
	if s.wa == nil {
		out := m[:0]
		for _, x := range m {
			if x != "webauthn" {
				out = append(out, x)
			}
		}
		m = out
	}
	return f, m, nil
}

// Proof is a second factor presented for a challenge: a Code (an
// authenticator app's 6 digits or a recovery code) or a WebAuthn
// Assertion (the PublicKeyCredential as JSON).
type Proof struct {
	Code      string
	Assertion json.RawMessage
}

// Refusal is a second factor that was not accepted. Reason is for the
// audit log: wrong_code, replayed_code, wrong_recovery_code,
// webauthn_failed, no_factor.
type Refusal struct {
	Reason string
	err    error
}

func (r *Refusal) Error() string { return "mfa: second factor refused: " + r.Reason }

// Unwrap gives the verification error, for logs (never shown to clients).
func (r *Refusal) Unwrap() error { return r.err }

// Kinds of second factor, as Complete reports them.
const (
	KindTOTP     = "totp"
	KindRecovery = "recovery_code"
	KindWebAuthn = "webauthn"
)

// Complete verifies proof for challenge c, presented from client address
// ip. Attempts are counted for the user and the address (by its
// clientip.Bucket) first (over the limit: *LockedError). A proof that does
// not hold is a *Refusal. One that holds is consumed together with the
// challenge, in one transaction in which then runs too (to start the
// session), after session.Lock; a challenge or code used by a concurrent
// request meanwhile gives ErrChallenge or a *Refusal, an account scheduled
// for deletion account.ErrClosing. It returns the kind of factor used.
func (s *Service) Complete(ctx context.Context, c Challenge, proof Proof, ip string, then func(tx pgx.Tx) error) (string, error) {
	now := s.now()
	if err := s.take(ctx, scopeUser, c.UserID, s.limits.PerUser, now); err != nil {
		return "", err
	}
	if err := s.take(ctx, scopeIP, ip, s.limits.PerIP, now); err != nil {
		return "", err
	}
	kind, consume, err := s.check(ctx, c, proof, now)
	if err != nil {
		return kind, err
	}
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// The account's and the user's locks before the challenge's: a
		// password change takes the user's and then drops the challenges,
		// so the other order could deadlock with it (session.Lock).
		if _, err := session.Lock(ctx, tx, c.CustomerID, c.UserID); err != nil {
			return err
		}
		if err := consumeChallenge(ctx, tx, c.ID); err != nil {
			return err
		}
		if err := consume(tx); err != nil {
			return err
		}
		return then(tx)
	})
	if err != nil {
		return kind, err
	}
	s.refund(ctx, scopeUser, c.UserID, now)
	s.refund(ctx, scopeIP, ip, now)
	return kind, nil
}

// check verifies proof without changing anything and returns how to
// consume the factor used.
func (s *Service) check(ctx context.Context, c Challenge, proof Proof, now time.Time) (string, func(pgx.Tx) error, error) {
	if len(proof.Assertion) > 0 {
		cred, err := s.verifyAssertion(ctx, c, proof.Assertion)
		if err != nil {
			return KindWebAuthn, nil, &Refusal{Reason: "webauthn_failed", err: err}
		}
		raw, err := json.Marshal(cred)
		if err != nil {
			return KindWebAuthn, nil, err
		}
		return KindWebAuthn, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, consumeAssertion, c.UserID, cred.ID, raw, now, int64(cred.Authenticator.SignCount))
			if err == nil && tag.RowsAffected() != 1 {
				return &Refusal{Reason: "webauthn_failed", err: errors.New("the credential was removed, or its signature counter did not advance past a use meanwhile")}
			}
			return err
		}, nil
	}
	code := normalizeCode(proof.Code)
	if codeRE.MatchString(code) {
		return s.checkTOTP(ctx, c.UserID, code, now)
	}
	return s.checkRecovery(ctx, c.UserID, proof.Code, now)
}

// consumeAssertion stores a security key's credential after a use, only
// if its signature counter still moves forward. The assertion was checked
// against the counter read before this transaction: two uses carrying the
// same counter (a key and its clone, at once) would both pass that check,
// so the update re-checks it under the row's lock, as go-webauthn does
// (a counter that stays 0 is a key without one).
const consumeAssertion = `UPDATE webauthn_credentials SET credential = $3, last_used_at = $4
WHERE user_id = $1 AND credential_id = $2
AND (coalesce((credential->'authenticator'->>'signCount')::bigint, 0) < $5
     OR ($5 = 0 AND coalesce((credential->'authenticator'->>'signCount')::bigint, 0) = 0))`

func (s *Service) checkTOTP(ctx context.Context, userID, code string, now time.Time) (string, func(pgx.Tx) error, error) {
	var sealed []byte
	var last *int64
	err := s.db.QueryRow(ctx, "SELECT secret_sealed, last_step FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL", userID).Scan(&sealed, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return KindTOTP, nil, &Refusal{Reason: "no_factor"}
	}
	if err != nil {
		return KindTOTP, nil, fmt.Errorf("mfa: read totp: %w", err)
	}
	seed, err := s.keys.openFor(userID, sealed)
	if err != nil {
		return KindTOTP, nil, err
	}
	step, ok := matchTOTP(string(seed), code, now)
	if !ok {
		return KindTOTP, nil, &Refusal{Reason: "wrong_code"}
	}
	if last != nil && step <= *last {
		return KindTOTP, nil, &Refusal{Reason: "replayed_code"}
	}
	return KindTOTP, func(tx pgx.Tx) error {
		// Only if no code of this step or a later one was accepted meanwhile.
		tag, err := tx.Exec(ctx, `UPDATE mfa_totp SET last_step = $2, last_used_at = $3
			WHERE user_id = $1 AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $2)`, userID, step, now)
		if err == nil && tag.RowsAffected() != 1 {
			return &Refusal{Reason: "replayed_code"}
		}
		return err
	}, nil
}

func (s *Service) checkRecovery(ctx context.Context, userID, typed string, now time.Time) (string, func(pgx.Tx) error, error) {
	canonical := canonicalRecovery(typed)
	rows, err := s.db.Query(ctx, "SELECT id, code_hash FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL", userID)
	if err != nil {
		return KindRecovery, nil, fmt.Errorf("mfa: read recovery codes: %w", err)
	}
	type stored struct {
		id   string
		hash []byte
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stored, error) {
		var x stored
		return x, row.Scan(&x.id, &x.hash)
	})
	if err != nil {
		return KindRecovery, nil, fmt.Errorf("mfa: read recovery codes: %w", err)
	}
	want := s.keys.hashRecovery(userID, canonical)
	match := ""
	for _, x := range all { // every one compared: no early exit
		if hmac.Equal(x.hash, want) && canonical != "" {
			match = x.id
		}
	}
	if match == "" {
		return KindRecovery, nil, &Refusal{Reason: "wrong_recovery_code"}
	}
	return KindRecovery, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE mfa_recovery_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL", match, now)
		if err == nil && tag.RowsAffected() != 1 {
			return &Refusal{Reason: "replayed_code"}
		}
		return err
	}, nil
}

// FirstFactor is what turning on a user's first factor did besides, in the
// same transaction: the recovery codes issued with it (shown once), and
// how many of the user's other sessions it ended, so that a session
// stolen before cannot outlive the factor.
type FirstFactor struct {
	RecoveryCodes []string
	SessionsEnded int64
}

// firstFactor issues user's recovery codes and ends every session of the
// user but keep; the edge drops the ended ones from its caches within a
// second (the sessions trigger notifies it). tx must hold lockUser: a
// sign-in that read no factor then waits for tx and is refused by
// session.Start, or started its session before and is ended here.
func (s *Service) firstFactor(ctx context.Context, tx pgx.Tx, userID, keep string) (*FirstFactor, error) {
	codes, err := s.replaceRecoveryCodes(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	tag, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND id::text <> $2 AND revoked_at IS NULL", userID, keep)
	if err != nil {
		return nil, fmt.Errorf("mfa: ending the other sessions: %w", err)
	}
	// And their ceremonies under way, as a password change drops them: a
	// registration an ended session began must not finish.
	if _, err := tx.Exec(ctx, "DELETE FROM mfa_challenges WHERE user_id = $1 AND purpose <> 'login' AND (session_id IS NULL OR session_id::text <> $2)", userID, keep); err != nil {
		return nil, fmt.Errorf("mfa: ending the other sessions' ceremonies: %w", err)
	}
	return &FirstFactor{RecoveryCodes: codes, SessionsEnded: tag.RowsAffected()}, nil
}

// ErrStepUpLost is returned when the caller's session, admitted by the
// step-up check before the action, no longer would be once the user's lock
// is held: another session's first factor ended it or raised the bar
// meanwhile. The action is not taken; the caller re-authenticates.
var ErrStepUpLost = errors.New("mfa: the session was ended or lost its step-up meanwhile")

// stillAdmitted repeats, in tx under the user's lock, the part of the
// step-up check that another session can change: the caller's session is
// still live, and has the second factor if its user now has one. The
// check made before the lock cannot see a first factor another session
// commits while this one waits for the lock (which ends this session, or
// raises the bar). The re-authentication's age is not judged again: the
// action was admitted on it moments ago. No session (a caller that is
// not one): nothing to re-check.
func (s *Service) stillAdmitted(ctx context.Context, tx pgx.Tx, sessionID string) error {
	if sessionID == "" {
		return nil
	}
	var aal int
	var hasFactor bool
	err := tx.QueryRow(ctx, `SELECT s.aal,
			EXISTS (SELECT 1 FROM mfa_totp t WHERE t.user_id = s.user_id AND t.confirmed_at IS NOT NULL)
			OR EXISTS (SELECT 1 FROM webauthn_credentials w WHERE w.user_id = s.user_id)
		FROM sessions s WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > now()`, sessionID).Scan(&aal, &hasFactor)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && hasFactor && aal < session.AAL2) {
		return ErrStepUpLost
	}
	if err != nil {
		return fmt.Errorf("mfa: re-check the session: %w", err)
	}
	return nil
}

// replaceRecoveryCodes gives user a fresh set of codes, ending the old.
func (s *Service) replaceRecoveryCodes(ctx context.Context, tx pgx.Tx, userID string) ([]string, error) {
	codes, err := newRecoveryCodes(RecoveryCodes)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM mfa_recovery_codes WHERE user_id = $1", userID); err != nil {
		return nil, err
	}
	for _, c := range codes {
		if _, err := tx.Exec(ctx, "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
			userID, s.keys.hashRecovery(userID, canonicalRecovery(c)), s.now()); err != nil {
			return nil, err
		}
	}
	return codes, nil
}

// lockUser locks user's row for the rest of tx: changes of the user's
// factors take turns, and a sign-in starting a session (session.Lock, FOR
// SHARE) waits for them or they for it. FOR NO KEY UPDATE, not FOR
// UPDATE: a key or server being created for the user (its foreign key
// takes FOR KEY SHARE on this row) while holding its session's row
// (stepup.LockSession) must not wait for this lock while this waits to
// end that session, a deadlock.
func lockUser(ctx context.Context, tx pgx.Tx, userID string) error {
	if _, err := tx.Exec(ctx, "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", userID); err != nil {
		return fmt.Errorf("mfa: lock the user: %w", err)
	}
	return nil
}

// ErrNotEnrolled is returned when an action needs a factor the user lacks.
var ErrNotEnrolled = errors.New("mfa: no second factor enrolled")

// NewRecoveryCodes replaces user's recovery codes and returns the new
// ones (shown once), for session sessionID, which must still be live and
// stepped up once the user's lock is held (ErrStepUpLost): a password
// change committed meanwhile ended it. A user without a factor has none.
func (s *Service) NewRecoveryCodes(ctx context.Context, userID, sessionID string) ([]string, error) {
	var codes []string
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := lockUser(ctx, tx, userID); err != nil {
			return err
		}
		if err := s.stillAdmitted(ctx, tx, sessionID); err != nil {
			return err
		}
		f, err := Enrolled(ctx, tx, userID)
		if err != nil {
			return err
		}
		if !f.Any() {
			return ErrNotEnrolled
		}
		codes, err = s.replaceRecoveryCodes(ctx, tx, userID)
		return err
	})
	return codes, err
}

// EnrolTTL is how long a TOTP enrolment may wait for its first code.
const EnrolTTL = 10 * time.Minute

// ErrEnrolled is returned when a user who has an authenticator app asks
// to enrol another: remove the first.
var ErrEnrolled = errors.New("mfa: an authenticator app is enrolled already")

// TOTPEnrolment is a new authenticator app's key, shown once.
type TOTPEnrolment struct {
	// Secret is the seed in base32, for typing into an app.
	Secret string `json:"secret"`
	// URL is the otpauth:// URL the QR code holds.
	URL string `json:"otpauth_url"`
	// ExpiresAt is when the enrolment must be confirmed by.
	ExpiresAt time.Time `json:"expires_at"`
}

// BeginTOTP makes a new seed for user (named account in the app),
// replacing any unconfirmed one. It works once confirmed with ConfirmTOTP.
func (s *Service) BeginTOTP(ctx context.Context, userID, account string) (TOTPEnrolment, error) {
	seed, err := newSeed()
	if err != nil {
		return TOTPEnrolment{}, err
	}
	key, err := keyOf(s.issuer, account, seed)
	if err != nil {
		return TOTPEnrolment{}, err
	}
	sealed, err := s.keys.sealFor(userID, []byte(seed))
	if err != nil {
		return TOTPEnrolment{}, err
	}
	now := s.now()
	tag, err := s.db.Exec(ctx, `INSERT INTO mfa_totp (user_id, secret_sealed, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $2, created_at = $3, last_step = NULL, last_used_at = NULL
		WHERE mfa_totp.confirmed_at IS NULL`, userID, sealed, now)
	if err != nil {
		return TOTPEnrolment{}, fmt.Errorf("mfa: store totp: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return TOTPEnrolment{}, ErrEnrolled
	}
	return TOTPEnrolment{Secret: seed, URL: key.URL(), ExpiresAt: now.Add(EnrolTTL)}, nil
}

// ErrNoEnrolment is returned when there is no unconfirmed enrolment of an
// authenticator app younger than EnrolTTL.
var ErrNoEnrolment = errors.New("mfa: no authenticator app enrolment in progress")

// pendingSeed is user's enrolment in progress: the seed, and as stored
// (sealed), so that a confirmation can name the very seed it checked.
func (s *Service) pendingSeed(ctx context.Context, userID string) (string, []byte, error) {
	var sealed []byte
	err := s.db.QueryRow(ctx, "SELECT secret_sealed FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NULL AND created_at > $2",
		userID, s.now().Add(-EnrolTTL)).Scan(&sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, ErrNoEnrolment
	}
	if err != nil {
		return "", nil, fmt.Errorf("mfa: read totp: %w", err)
	}
	seed, err := s.keys.openFor(userID, sealed)
	return string(seed), sealed, err
}

// TOTPQRCode is the PNG of the QR code of user's enrolment in progress
// (named account in the app).
func (s *Service) TOTPQRCode(ctx context.Context, userID, account string) ([]byte, error) {
	seed, _, err := s.pendingSeed(ctx, userID)
	if err != nil {
		return nil, err
	}
	key, err := keyOf(s.issuer, account, seed)
	if err != nil {
		return nil, err
	}
	return qrPNG(key)
}

// ConfirmTOTP turns user's enrolment in progress on, if code is the app's
// current code (a wrong code is a *Refusal; attempts count against the
// limits). If it is the user's first factor, the user's recovery codes
// come back with it (shown once) and every session but keepSession ends
// (FirstFactor; nil otherwise).
func (s *Service) ConfirmTOTP(ctx context.Context, userID, code, ip, keepSession string) (*FirstFactor, error) {
	now := s.now()
	if err := s.take(ctx, scopeUser, userID, s.limits.PerUser, now); err != nil {
		return nil, err
	}
	if err := s.take(ctx, scopeIP, ip, s.limits.PerIP, now); err != nil {
		return nil, err
	}
	seed, sealed, err := s.pendingSeed(ctx, userID)
	if err != nil {
		return nil, err
	}
	step, ok := matchTOTP(seed, normalizeCode(code), now)
	if !ok {
		return nil, &Refusal{Reason: "wrong_code"}
	}
	var first *FirstFactor
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := lockUser(ctx, tx, userID); err != nil {
			return err
		}
		if err := s.stillAdmitted(ctx, tx, keepSession); err != nil {
			return err
		}
		f, err := Enrolled(ctx, tx, userID)
		if err != nil {
			return err
		}
		// The seed the code was checked against, not one a new setup (in
		// another tab, say) stored since: that would turn on a seed the
		// user's app does not have.
		tag, err := tx.Exec(ctx, `UPDATE mfa_totp SET confirmed_at = $2, last_step = $3
			WHERE user_id = $1 AND confirmed_at IS NULL AND secret_sealed = $4 AND created_at > $5`,
			userID, now, step, sealed, now.Add(-EnrolTTL))
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return ErrNoEnrolment
		}
		if !f.Any() && f.RecoveryCodes == 0 {
			first, err = s.firstFactor(ctx, tx, userID, keepSession)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	s.refund(ctx, scopeUser, userID, now)
	s.refund(ctx, scopeIP, ip, now)
	return first, nil
}

// RemoveTOTP removes user's authenticator app (confirmed or not), for
// session sessionID (see remove), and reports whether there was one.
// Removing the last factor removes the recovery codes too.
func (s *Service) RemoveTOTP(ctx context.Context, userID, sessionID string) (bool, error) {
	return s.remove(ctx, userID, sessionID, "DELETE FROM mfa_totp WHERE user_id = $1", userID)
}

// RemoveWebAuthn removes user's credential id, for session sessionID (see
// remove), and reports whether it was there. Removing the last factor
// removes the recovery codes too.
func (s *Service) RemoveWebAuthn(ctx context.Context, userID, sessionID, id string) (bool, error) {
	return s.remove(ctx, userID, sessionID, "DELETE FROM webauthn_credentials WHERE user_id = $1 AND id = $2", userID, id)
}

// remove runs sql, a factor's removal, under the user's lock, once session
// sessionID is found still live and stepped up there (ErrStepUpLost): a
// password change committed while it waited for the lock ended it.
func (s *Service) remove(ctx context.Context, userID, sessionID, sql string, args ...any) (bool, error) {
	var removed bool
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// One removal at a time per user: the last-factor check holds.
		if err := lockUser(ctx, tx, userID); err != nil {
			return err
		}
		if err := s.stillAdmitted(ctx, tx, sessionID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		removed = tag.RowsAffected() > 0
		f, err := Enrolled(ctx, tx, userID)
		if err != nil {
			return err
		}
		if !f.Any() {
			_, err = tx.Exec(ctx, "DELETE FROM mfa_recovery_codes WHERE user_id = $1", userID)
		}
		return err
	})
	return removed, err
}

// Status is what a user sees of their second factors.
type Status struct {
	TOTP struct {
		Enabled    bool       `json:"enabled"`
		Since      *time.Time `json:"since"`
		LastUsedAt *time.Time `json:"last_used_at"`
	} `json:"totp"`
	WebAuthn          []Credential `json:"webauthn"`
	WebAuthnAvailable bool         `json:"webauthn_available"`
	RecoveryCodesLeft int          `json:"recovery_codes_left"`
}

// StatusOf returns user's second factors.
func (s *Service) StatusOf(ctx context.Context, userID string) (Status, error) {
	var st Status
	st.WebAuthnAvailable = s.wa != nil
	err := s.db.QueryRow(ctx, "SELECT confirmed_at, last_used_at FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL", userID).
		Scan(&st.TOTP.Since, &st.TOTP.LastUsedAt)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("mfa: read totp: %w", err)
	}
	st.TOTP.Enabled = st.TOTP.Since != nil
	rows, err := s.db.Query(ctx, "SELECT id, name, created_at, last_used_at FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id", userID)
	if err != nil {
		return st, fmt.Errorf("mfa: read credentials: %w", err)
	}
	st.WebAuthn, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Credential, error) {
		var c Credential
		return c, row.Scan(&c.ID, &c.Name, &c.CreatedAt, &c.LastUsedAt)
	})
	if err != nil {
		return st, fmt.Errorf("mfa: read credentials: %w", err)
	}
	if st.WebAuthn == nil {
		st.WebAuthn = []Credential{}
	}
	if err := s.db.QueryRow(ctx, "SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL", userID).Scan(&st.RecoveryCodesLeft); err != nil {
		return st, fmt.Errorf("mfa: read recovery codes: %w", err)
	}
	return st, nil
}

// isUniqueViolation reports a unique-constraint conflict.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// Environment variables of the functions that use a Service.
const (
	// EnvSecret is the MFA secret (required, at least MinSecretLen bytes).
	EnvSecret = "GUARDIAN_MFA_SECRET"
	// EnvURL is the public base URL: WebAuthn's origin and relying party.
	EnvURL = "GUARDIAN_URL"
	// EnvRPID overrides the relying party (optional).
	EnvRPID = "GUARDIAN_WEBAUTHN_RP_ID"
)

// ConfigFromEnv reads a Service's Config; missing or short secrets are
// reported by env.Err, by name only.
func ConfigFromEnv(env *config.Loader) Config {
	return Config{
		Secret:    env.Secret(EnvSecret, MinSecretLen),
		PublicURL: env.Optional(EnvURL, ""),
		RPID:      env.Optional(EnvRPID, ""),
	}
}
