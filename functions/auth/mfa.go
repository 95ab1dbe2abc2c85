package main

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reply"
	"github.com/glassmkr/guardian/shared/reqbody"
	"github.com/glassmkr/guardian/shared/session"
)

// The second step of a sign-in or re-auth (shared/mfa). After the right
// password of a user with a second factor, /auth/login and /auth/reauth
// answer 401 mfa_required with an mfa_token (a form sign-in: a redirect to
// the second-factor page and the guardian_mfa cookie); the client then
// posts the factor with the token to /auth/login/mfa or /auth/reauth/mfa.
// A security key first asks /auth/login/webauthn or /auth/reauth/webauthn
// for the options of navigator.credentials.get.

// lockedOut answers for a user who used up second-factor attempts and
// reports whether it did. It is asked only after the password was found
// right, so a wrong one is answered as for an unknown e-mail.
func (h *handler) lockedOut(w http.ResponseWriter, r *http.Request, form bool, customerID, userID string) (bool, error) {
	err := h.mfa.Locked(r.Context(), userID)
	var le *mfa.LockedError
	if err == nil || !errors.As(err, &le) {
		return false, err
	}
	audit.Annotate(w, audit.Annotation{CustomerID: customerID, UserID: userID, ResourceType: "session", Action: "auth_failed",
		Metadata: map[string]any{"reason": "second_factor_locked"}})
	h.tooManyAttempts(w, r, form, le)
	return true, nil
}

func (h *handler) tooManyAttempts(w http.ResponseWriter, r *http.Request, form bool, le *mfa.LockedError) {
	if form {
		http.SetCookie(w, mfa.ClearCookie())
		http.Redirect(w, r, "/login?error=locked", http.StatusSeeOther)
		return
	}
	retry := le.RetryAfter(h.now())
	w.Header().Set("Retry-After", strconv.Itoa(retry))
	problem.Write(w, problem.New(http.StatusTooManyRequests, "too_many_attempts",
		"sign-in to this account is paused after too many wrong second-factor codes; try again in "+strconv.Itoa((retry+59)/60)+" minutes"))
}

// askSecondFactor stores challenge c of a sign-in or re-auth whose
// password was verified against hash, and asks the client for a second
// factor. Under the locks session.Start takes, it refuses as Start does
// (account.ErrClosing, session.ErrPasswordChanged) and leaves answering
// errors to the caller: a password change drops the user's challenges,
// and one made after it on the old password must not outlive it.
func (h *handler) askSecondFactor(w http.ResponseWriter, r *http.Request, form bool, c mfa.Challenge, hash string, methods []string) error {
	now := h.now()
	var token string
	var expires time.Time
	err := pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		current, err := session.Lock(r.Context(), tx, c.CustomerID, c.UserID)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare([]byte(current), []byte(hash)) != 1 {
			return session.ErrPasswordChanged
		}
		token, expires, err = mfa.NewChallenge(r.Context(), tx, c, now)
		return err
	})
	if err != nil {
		return err
	}
	audit.Annotate(w, audit.Annotation{CustomerID: c.CustomerID, UserID: c.UserID, ResourceType: "mfa_challenge", Action: "create",
		Metadata: map[string]any{"purpose": c.Purpose, "method": c.Method, "second_factor": "required", "methods": methods}})
	if form {
		http.SetCookie(w, mfa.Cookie(token, expires, now))
		http.Redirect(w, r, secondStepPage(methods, ""), http.StatusSeeOther)
		return nil
	}
	next := "/auth/login/mfa"
	if c.Purpose == mfa.PurposeReauth {
		next = "/auth/reauth/mfa"
	}
	p := problem.New(http.StatusUnauthorized, "mfa_required",
		"the password was right; send a second factor with mfa_token to "+next)
	p.Extra = map[string]any{"mfa_token": token, "methods": methods, "expires_at": expires.UTC().Format(time.RFC3339)}
	problem.Write(w, p)
	return nil
}

// secondStepPage is the sign-in page's second-factor form.
func secondStepPage(methods []string, errCode string) string {
	q := url.Values{"step": {"mfa"}, "methods": {strings.Join(methods, ",")}}
	if errCode != "" {
		q.Set("error", errCode)
	}
	return "/login?" + q.Encode()
}

// proofInput is the body of the second step: JSON {mfa_token, code} or
// {mfa_token, credential}, or a form with code (the token in the cookie).
type proofInput struct {
	Token      string          `json:"mfa_token"`
	Code       string          `json:"code"`
	Credential json.RawMessage `json:"credential"`
}

// maxProofBody bounds a second-factor body (an assertion is ~1-2 KiB).
const maxProofBody = 16 << 10

func readProof(w http.ResponseWriter, r *http.Request) (proofInput, bool, *problem.Problem) {
	var in proofInput
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxProofBody))
	if err != nil {
		return in, false, unreadBody(err, "the body may be at most 16 KiB")
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return in, true, problem.New(http.StatusBadRequest, "invalid_request", "the form could not be read")
		}
		in.Token, in.Code = v.Get("mfa_token"), v.Get("code")
		return in, true, nil
	case "application/json", "":
		if len(bytes.TrimSpace(body)) == 0 {
			return in, false, nil
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			if fe := reqbody.FieldOf(err); fe != nil {
				p := problem.New(http.StatusBadRequest, "invalid_request", fe.Error())
				p.Extra = map[string]any{"field": fe.Field}
				return in, false, p
			}
			return in, false, problem.New(http.StatusBadRequest, "invalid_request", "the body must be a JSON object with mfa_token and code or credential")
		}
		if string(in.Credential) == "null" {
			in.Credential = nil
		}
		return in, false, nil
	}
	return in, false, problem.New(http.StatusUnsupportedMediaType, "unsupported_media_type", "send JSON or a form")
}

var challengeGone = problem.New(http.StatusUnauthorized, "mfa_expired",
	"this sign-in expired or was already used; start again with the password")

// challenge reads the proof body and its live challenge for purpose;
// it answers the client itself when there is none.
func (h *handler) challenge(w http.ResponseWriter, r *http.Request, purpose, sessionID string) (mfa.Challenge, proofInput, bool, bool) {
	in, form, p := readProof(w, r)
	if p != nil {
		problem.Write(w, p)
		return mfa.Challenge{}, in, form, false
	}
	c, err := h.mfa.Challenge(r.Context(), mfa.TokenOf(r, in.Token), purpose, sessionID)
	if errors.Is(err, mfa.ErrChallenge) {
		h.challengeGone(w, r, form)
		return c, in, form, false
	}
	if err != nil {
		h.unavailable(w, err)
		return c, in, form, false
	}
	return c, in, form, true
}

func (h *handler) challengeGone(w http.ResponseWriter, r *http.Request, form bool) {
	audit.Annotate(w, audit.Annotation{ResourceType: "session", Action: "auth_failed", Metadata: map[string]any{"reason": "mfa_challenge_invalid"}})
	http.SetCookie(w, mfa.ClearCookie())
	if form {
		http.Redirect(w, r, "/login?error=expired", http.StatusSeeOther)
		return
	}
	problem.Write(w, challengeGone)
}

// complete verifies the second factor of c and, in the same transaction,
// starts the session p describes. It answers failures itself.
func (h *handler) complete(w http.ResponseWriter, r *http.Request, form bool, c mfa.Challenge, in proofInput, p session.Params) (session.Issued, string, bool) {
	if in.Code == "" && len(in.Credential) == 0 {
		problem.Write(w, problem.New(http.StatusBadRequest, "invalid_request", "send code (an authenticator app's code or a recovery code) or credential (a WebAuthn assertion)"))
		return session.Issued{}, "", false
	}
	var issued session.Issued
	// An account scheduled for deletion is refused by session.Start, under
	// the account's lock (account.ErrClosing).
	kind, err := h.mfa.Complete(r.Context(), c, mfa.Proof{Code: in.Code, Assertion: in.Credential}, identity.ClientIP(r), func(tx pgx.Tx) error {
		var err error
		issued, err = h.startSessionTx(r, tx, p)
		return err
	})
	if err == nil {
		return issued, kind, true
	}
	fail := func(reason string) {
		audit.Annotate(w, audit.Annotation{CustomerID: c.CustomerID, UserID: c.UserID, ResourceType: "session", Action: "auth_failed",
			Metadata: map[string]any{"reason": reason, "second_factor": kind, "purpose": c.Purpose}})
	}
	var le *mfa.LockedError
	var refusal *mfa.Refusal
	switch {
	case errors.As(err, &le):
		fail("second_factor_locked")
		h.tooManyAttempts(w, r, form, le)
	case errors.As(err, &refusal):
		fail(refusal.Reason)
		if refusal.Unwrap() != nil {
			h.log.Info("second factor refused", zap.String("reason", refusal.Reason), zap.Error(refusal.Unwrap()))
		}
		if form {
			_, methods, _ := h.mfa.Methods(r.Context(), c.UserID)
			http.Redirect(w, r, secondStepPage(methods, "code"), http.StatusSeeOther)
			return issued, kind, false
		}
		problem.Write(w, problem.New(http.StatusUnauthorized, "invalid_second_factor", "the code or security key was not accepted"))
	case errors.Is(err, mfa.ErrChallenge):
		h.challengeGone(w, r, form)
	case errors.Is(err, account.ErrClosing):
		fail("account_closing")
		if form {
			http.Redirect(w, r, "/login?error=credentials", http.StatusSeeOther)
			return issued, kind, false
		}
		problem.Write(w, invalidCredentials)
	default:
		h.unavailable(w, err)
	}
	return issued, kind, false
}

// loginMFA completes a sign-in with its second factor.
func (h *handler) loginMFA(w http.ResponseWriter, r *http.Request) {
	c, in, form, ok := h.challenge(w, r, mfa.PurposeLogin, "")
	if !ok {
		return
	}
	// The session whose cookie the new one replaces: the one this request
	// came with, verified by the edge, else the first step's. (A browser
	// that signed in as someone else between the steps holds that other
	// session now; the first step's ended when it did.)
	replacing := c.SessionID
	if id, ok := identity.FromRequest(r); ok && id.Kind == identity.KindSession {
		replacing = id.SessionID
	}
	issued, kind, ok := h.complete(w, r, form, c, in, session.Params{UserID: c.UserID, CustomerID: c.CustomerID,
		Reauthed: c.Reauthed, ReauthAt: c.VerifiedAt, AAL: session.AAL2, Replacing: replacing})
	if !ok {
		return
	}
	audit.Annotate(w, audit.Annotation{CustomerID: c.CustomerID, UserID: c.UserID, ResourceType: "session", ResourceID: issued.ID, Action: "create",
		Metadata: map[string]any{"method": c.Method, "second_factor": kind, "replaced_session": replacing, "aal": session.AAL2}})
	http.SetCookie(w, mfa.ClearCookie())
	http.SetCookie(w, session.Cookie(issued.Token, h.domain, issued.Expires, h.now()))
	if form {
		http.Redirect(w, r, "/settings/keys", http.StatusSeeOther)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// reauthMFA completes a re-auth with its second factor: a fresh session
// at assurance level 2 replaces the caller's.
func (h *handler) reauthMFA(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionOf(w, r)
	if !ok {
		return
	}
	c, in, form, ok := h.challenge(w, r, mfa.PurposeReauth, id.SessionID)
	if !ok {
		return
	}
	issued, kind, ok := h.complete(w, r, form, c, in, session.Params{UserID: id.UserID, CustomerID: id.CustomerID,
		Reauthed: true, ReauthAt: c.VerifiedAt, AAL: session.AAL2, Replacing: id.SessionID})
	if !ok {
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: issued.ID, Action: "update",
		Metadata: map[string]any{"reauthenticated": true, "second_factor": kind, "replaced_session": id.SessionID, "aal": session.AAL2}})
	http.SetCookie(w, session.Cookie(issued.Token, h.domain, issued.Expires, h.now()))
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) loginWebAuthn(w http.ResponseWriter, r *http.Request) {
	c, _, _, ok := h.challenge(w, r, mfa.PurposeLogin, "")
	if ok {
		h.webauthnOptions(w, r, c)
	}
}

func (h *handler) reauthWebAuthn(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionOf(w, r)
	if !ok {
		return
	}
	c, _, _, ok := h.challenge(w, r, mfa.PurposeReauth, id.SessionID)
	if ok {
		h.webauthnOptions(w, r, c)
	}
}

// webauthnOptions begins a WebAuthn assertion for c and answers what
// navigator.credentials.get takes ({"publicKey": {...}}).
func (h *handler) webauthnOptions(w http.ResponseWriter, r *http.Request, c mfa.Challenge) {
	opts, err := h.mfa.LoginOptions(r.Context(), c)
	switch {
	case errors.Is(err, mfa.ErrWebAuthnOff), errors.Is(err, mfa.ErrNoCredentials):
		problem.Write(w, problem.New(http.StatusConflict, "webauthn_unavailable", "no security key can be used for this account here; use a code"))
	case errors.Is(err, mfa.ErrChallenge):
		h.challengeGone(w, r, false)
	case err != nil:
		h.unavailable(w, err)
	default:
		reply.JSON(w, http.StatusOK, opts)
	}
}
