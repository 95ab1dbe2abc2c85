package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/password"
	"github.com/glassmkr/guardian/shared/pgtext"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/stepup"
)

type handler struct {
	db       *pgxpool.Pool
	secret   []byte
	domain   string
	verifier *password.Verifier
	mfa      *mfa.Service
	log      *zap.Logger
	now      func() time.Time
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /auth/login", h.login)
	mux.HandleFunc("POST /auth/login/mfa", h.loginMFA)
	mux.HandleFunc("POST /auth/login/webauthn", h.loginWebAuthn)
	mux.HandleFunc("POST /auth/logout", h.logout)
	mux.HandleFunc("POST /auth/reauth", h.reauth)
	mux.HandleFunc("POST /auth/reauth/mfa", h.reauthMFA)
	mux.HandleFunc("POST /auth/reauth/webauthn", h.reauthWebAuthn)
	mux.HandleFunc("POST /auth/password", h.changePassword)
	mux.HandleFunc("GET /login", h.loginPage)
	return mux
}

// maxBody bounds the small JSON or form bodies these routes take.
const maxBody = 8 << 10

// unreadBody is the problem of a body that did not read: 413 past its
// bound (tooLarge says which), else 400 (a client that stopped sending).
func unreadBody(err error, tooLarge string) *problem.Problem {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return problem.New(http.StatusRequestEntityTooLarge, "payload_too_large", tooLarge)
	}
	return problem.New(http.StatusBadRequest, "invalid_request", "the body could not be read to its end")
}

// fields reads a JSON object or a form into a map of strings.
func fields(w http.ResponseWriter, r *http.Request) (map[string]string, bool, *problem.Problem) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return nil, false, unreadBody(err, "the body may be at most 8 KiB")
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	out := map[string]string{}
	switch mt {
	case "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, true, problem.New(http.StatusBadRequest, "invalid_request", "the form could not be read")
		}
		for k := range v {
			out[k] = v.Get(k)
		}
		return out, true, nil
	case "application/json", "":
		var raw map[string]any
		if err := json.Unmarshal(body, &raw); err != nil {
			return nil, false, problem.New(http.StatusBadRequest, "invalid_request", "the body must be a JSON object")
		}
		for k, val := range raw {
			s, ok := val.(string)
			if !ok {
				p := problem.New(http.StatusBadRequest, "invalid_request", k+" must be a string")
				p.Extra = map[string]any{"field": k}
				return nil, false, p
			}
			out[k] = s
		}
		return out, false, nil
	}
	return nil, false, problem.New(http.StatusUnsupportedMediaType, "unsupported_media_type", "send JSON or a form")
}

// required answers 400 invalid_request naming the first of names that f
// lacks or holds empty, as keys and mfa name a field, and returns false.
// A password is checked only once one was sent: a missing or misspelled
// field would otherwise cost a bcrypt comparison and be answered, and
// audited, as a wrong password.
func required(w http.ResponseWriter, f map[string]string, names ...string) bool {
	for _, name := range names {
		if f[name] == "" {
			p := problem.New(http.StatusBadRequest, "invalid_request", name+": required")
			p.Extra = map[string]any{"field": name}
			problem.Write(w, p)
			return false
		}
	}
	return true
}

var loginPage = page.New("login", `
{{if .MFA}}<form method="post" action="/auth/login/mfa" id="mfa-form">
{{if .Error}}<p class="error" role="alert">{{.Error}}</p>{{end}}
<p>Your password was right. Now confirm it is you with your second factor.</p>
{{if .WebAuthn}}<p><button type="button" id="use-key" data-webauthn-login="/auth/login">Use a security key</button></p>{{end}}
<p><label>{{if .TOTP}}Code from your authenticator app, or a recovery code{{else}}Recovery code{{end}}
<input name="code" id="code" autocomplete="one-time-code" autocapitalize="none" spellcheck="false" maxlength="32" required></label></p>
<p><button type="submit" id="verify-code">Verify</button></p>
</form>
<p><a href="/login">Start again</a></p>
{{else}}<form method="post" action="/auth/login">
{{if .Error}}<p class="error" role="alert">{{.Error}}</p>{{end}}
<p><label>E-mail <input type="email" name="email" autocomplete="username" required></label></p>
<p><label>Password <input type="password" name="password" autocomplete="current-password" required minlength="12" maxlength="72"></label></p>
<p><button type="submit" id="sign-in">Sign in</button></p>
</form>
<p>or <a href="/auth/google/start" id="google">sign in with Google</a> (a first sign-in creates your account).</p>{{end}}`)

func (h *handler) loginPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	msg := ""
	switch q.Get("error") {
	case "credentials":
		msg = "The e-mail address or the password is wrong."
	case "busy":
		msg = "Too many sign-in attempts are being checked; try again in a moment."
	case "locked":
		msg = "Sign-in to this account is paused after too many wrong codes. Try again in 15 minutes."
	case "code":
		msg = "That code or security key was not accepted. Try again."
	case "expired":
		msg = "This sign-in expired or was already used. Enter your password again."
	case "":
	default:
		msg = "Sign-in failed; try again."
	}
	data := map[string]any{"Error": msg, "MFA": q.Get("step") == "mfa"}
	// The methods only shape the form; the server checks what is sent.
	methods := strings.Split(q.Get("methods"), ",")
	data["WebAuthn"] = slices.Contains(methods, "webauthn")
	data["TOTP"] = slices.Contains(methods, "totp") || !slices.Contains(methods, "recovery_code")
	if err := page.Render(w, loginPage, "Sign in", false, data); err != nil {
		h.log.Warn("rendering the login page failed", zap.Error(err))
	}
}

var invalidCredentials = problem.New(http.StatusUnauthorized, "invalid_credentials", "the e-mail address or the password is wrong")

func (h *handler) busy(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "2")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "busy", "too many sign-in attempts are being checked; try again shortly"))
}

func (h *handler) unavailable(w http.ResponseWriter, err error) {
	fnserve.LogFailure(h.log, "sign-in store unavailable", err)
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "sign-in is temporarily unavailable"))
}

const userByEmail = `SELECT u.id, u.customer_id, coalesce(u.password_hash, ''), c.deletion_requested_at IS NOT NULL
FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.email = $1`

func (h *handler) login(w http.ResponseWriter, r *http.Request) {
	f, form, p := fields(w, r)
	if p != nil {
		problem.Write(w, p)
		return
	}
	f["email"] = strings.ToLower(strings.TrimSpace(f["email"]))
	if !required(w, f, "email", "password") {
		return
	}
	email, pw := f["email"], f["password"]
	var userID, customerID, hash string
	var closing bool
	var err error
	// An e-mail PostgreSQL's text cannot hold (a NUL, bytes that are not
	// UTF-8) belongs to nobody: the same answer as any unknown e-mail,
	// rather than a query error read as an outage.
	if pgtext.Valid(email) {
		err = h.db.QueryRow(r.Context(), userByEmail, email).Scan(&userID, &customerID, &hash, &closing)
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		h.unavailable(w, err)
		return
	}
	// Unknown e-mail and wrong password take one bcrypt comparison each
	// and get the same answer.
	verr := h.verifier.Verify(r.Context(), hash, pw)
	if errors.Is(verr, password.ErrBusy) {
		if form {
			http.Redirect(w, r, "/login?error=busy", http.StatusSeeOther)
			return
		}
		h.busy(w)
		return
	}
	if verr != nil || closing {
		reason := "wrong_password"
		if userID == "" {
			reason = "unknown_email"
		} else if closing {
			reason = "account_closing"
		}
		h.loginRefused(w, r, form, customerID, userID, reason)
		return
	}
	// A user out of second-factor attempts is not told so here: the
	// password step answers as for any user (a wrong password as for an
	// unknown e-mail, a right one with the second-factor prompt), so the
	// lockout reveals neither the account nor whether the password was
	// right. The second step, which only the password opens, says it
	// (mfa.Service.Complete counts attempts before it checks a code).
	// This browser's session ends with the new one's start, whoever's it
	// is: signing in as another user must not leave the first one's
	// session valid behind the replaced cookie.
	old := ""
	if id, ok := identity.FromRequest(r); ok && id.Kind == identity.KindSession {
		old = id.SessionID
	}
	issued, asked, err := h.afterPassword(w, r, form, mfa.Challenge{UserID: userID, CustomerID: customerID, Purpose: mfa.PurposeLogin,
		SessionID: old, Method: mfa.MethodPassword, Reauthed: true},
		session.Params{UserID: userID, CustomerID: customerID, Reauthed: true, AAL: session.AAL1, Replacing: old, PasswordHash: hash})
	switch {
	case err == nil && asked:
		return
	case errors.Is(err, account.ErrClosing):
		// The deletion committed while the password was being checked.
		h.loginRefused(w, r, form, customerID, userID, "account_closing")
		return
	case errors.Is(err, session.ErrPasswordChanged):
		// So did a password change: the password given is wrong now.
		h.loginRefused(w, r, form, customerID, userID, "password_changed")
		return
	case err != nil:
		h.unavailable(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{CustomerID: customerID, UserID: userID, ResourceType: "session", ResourceID: issued.ID, Action: "create",
		Metadata: map[string]any{"method": "password", "replaced_session": old, "aal": session.AAL1}})
	http.SetCookie(w, session.Cookie(issued.Token, h.domain, issued.Expires, h.now()))
	if form {
		http.Redirect(w, r, "/settings/keys", http.StatusSeeOther)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// loginRefused answers a failed sign-in as a wrong password, and audits
// why it failed.
func (h *handler) loginRefused(w http.ResponseWriter, r *http.Request, form bool, customerID, userID, reason string) {
	audit.Annotate(w, audit.Annotation{CustomerID: customerID, UserID: userID, ResourceType: "session", Action: "auth_failed",
		Metadata: map[string]any{"reason": reason}})
	if form {
		http.Redirect(w, r, "/login?error=credentials", http.StatusSeeOther)
		return
	}
	problem.Write(w, invalidCredentials)
}

// afterPassword goes on with a sign-in or re-auth whose password (the hash
// p.PasswordHash) was right: it asks for the second factor of a user who
// has one (challenge c; asked) and otherwise starts the session p
// describes. A first factor turned on while the password was checked is
// asked for all the same. The caller answers errors: account.ErrClosing
// and session.ErrPasswordChanged (a deletion or a password change
// committed meanwhile) and outages.
func (h *handler) afterPassword(w http.ResponseWriter, r *http.Request, form bool, c mfa.Challenge, p session.Params) (session.Issued, bool, error) {
	for range 2 {
		factors, methods, err := h.mfa.Methods(r.Context(), c.UserID)
		if err != nil {
			return session.Issued{}, false, err
		}
		if factors.Any() {
			return session.Issued{}, true, h.askSecondFactor(w, r, form, c, p.PasswordHash, methods)
		}
		issued, err := h.startSession(r, p)
		if !errors.Is(err, session.ErrSecondFactor) {
			return issued, false, err
		}
		// A first factor was turned on while the password was checked;
		// Start saw it committed, so the next pass reads it and asks.
	}
	return session.Issued{}, false, session.ErrSecondFactor
}

// startSession starts the session p describes for the client of r.
func (h *handler) startSession(r *http.Request, p session.Params) (session.Issued, error) {
	var issued session.Issued
	err := pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		var err error
		issued, err = h.startSessionTx(r, tx, p)
		return err
	})
	return issued, err
}

func (h *handler) startSessionTx(r *http.Request, tx pgx.Tx, p session.Params) (session.Issued, error) {
	p.IP, p.UserAgent = identity.ClientIP(r), r.UserAgent()
	return session.Start(r.Context(), tx, h.secret, p, h.now())
}

// sessionOf returns the caller's session identity; the routes admit only
// sessions, so anything else is a configuration error.
func sessionOf(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := identity.FromRequest(r)
	if !ok || id.Kind != identity.KindSession {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no session identity"))
		return id, false
	}
	return id, true
}

func (h *handler) logout(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionOf(w, r)
	if !ok {
		return
	}
	if _, err := h.db.Exec(r.Context(), "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", id.SessionID); err != nil {
		h.unavailable(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: id.SessionID, Action: "delete", Metadata: map[string]any{"reason": "logout"}})
	http.SetCookie(w, session.ClearCookie(h.domain))
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) reauth(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionOf(w, r)
	if !ok {
		return
	}
	f, _, p := fields(w, r)
	if p != nil {
		problem.Write(w, p)
		return
	}
	var hash string
	var closing bool
	if err := h.db.QueryRow(r.Context(), `SELECT coalesce(u.password_hash, ''), c.deletion_requested_at IS NOT NULL
		FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.id = $1`, id.UserID).Scan(&hash, &closing); err != nil {
		h.unavailable(w, err)
		return
	}
	if closing {
		// As sign-in is: the session that asked for the deletion lives on,
		// but gets no fresh re-auth (which would let it mint keys again).
		audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: id.SessionID, Action: "auth_failed", Metadata: map[string]any{"reason": "account_closing"}})
		problem.Write(w, problem.New(http.StatusConflict, "account_closing", "this account is scheduled for deletion"))
		return
	}
	if hash == "" {
		// An account made by Google sign-in has no password to confirm:
		// it confirms with Google (asked to authenticate anew), and the
		// dashboard offers that instead of a prompt it cannot answer.
		p := problem.New(http.StatusConflict, "password_not_set", "this account signs in with Google and has no password: confirm with Google instead")
		p.Extra = map[string]any{"reauth_url": "/auth/google/start?reauth=1"}
		problem.Write(w, p)
		return
	}
	if !required(w, f, "password") {
		return
	}
	verr := h.verifier.Verify(r.Context(), hash, f["password"])
	if errors.Is(verr, password.ErrBusy) {
		h.busy(w)
		return
	}
	if locked, err := h.lockedOut(w, r, false, id.CustomerID, id.UserID); locked || err != nil {
		if err != nil {
			h.unavailable(w, err)
		}
		return
	}
	if verr != nil {
		h.reauthRefused(w, id.SessionID, "reauth_wrong_password")
		return
	}
	issued, asked, err := h.afterPassword(w, r, false, mfa.Challenge{UserID: id.UserID, CustomerID: id.CustomerID, Purpose: mfa.PurposeReauth,
		SessionID: id.SessionID, Method: mfa.MethodPassword, Reauthed: true},
		session.Params{UserID: id.UserID, CustomerID: id.CustomerID, Reauthed: true, AAL: session.AAL1, Replacing: id.SessionID, PasswordHash: hash})
	switch {
	case err == nil && asked:
		return
	case errors.Is(err, account.ErrClosing):
		problem.Write(w, problem.New(http.StatusConflict, "account_closing", "this account is scheduled for deletion"))
		return
	case errors.Is(err, session.ErrPasswordChanged):
		// A password change committed while this one was checked.
		h.reauthRefused(w, id.SessionID, "password_changed")
		return
	case err != nil:
		h.unavailable(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: issued.ID, Action: "update",
		Metadata: map[string]any{"reauthenticated": true, "replaced_session": id.SessionID, "aal": session.AAL1}})
	http.SetCookie(w, session.Cookie(issued.Token, h.domain, issued.Expires, h.now()))
	w.WriteHeader(http.StatusNoContent)
}

// reauthRefused answers a failed re-auth of session sessionID as a wrong
// password, and audits why it failed.
func (h *handler) reauthRefused(w http.ResponseWriter, sessionID, reason string) {
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: sessionID, Action: "auth_failed", Metadata: map[string]any{"reason": reason}})
	problem.Write(w, problem.New(http.StatusUnauthorized, "invalid_credentials", "the password is wrong"))
}

// passwordRefused answers a password change of user userID whose current
// password did not check as a wrong password, and audits it as a failed
// authentication: a stolen cookie can guess the password here.
func (h *handler) passwordRefused(w http.ResponseWriter, userID, reason string) {
	audit.Annotate(w, audit.Annotation{ResourceType: "user", ResourceID: userID, Action: "auth_failed", Metadata: map[string]any{"reason": reason}})
	problem.Write(w, problem.New(http.StatusUnauthorized, "invalid_credentials", "the current password is wrong"))
}

func (h *handler) changePassword(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionOf(w, r)
	if !ok {
		return
	}
	f, _, p := fields(w, r)
	if p != nil {
		problem.Write(w, p)
		return
	}
	if !required(w, f, "new_password") {
		return
	}
	var hash, email string
	if err := h.db.QueryRow(r.Context(), "SELECT coalesce(password_hash, ''), email FROM users WHERE id = $1", id.UserID).Scan(&hash, &email); err != nil {
		h.unavailable(w, err)
		return
	}
	// A user with a second factor changes the password only from a session
	// re-authenticated with it: otherwise a stolen cookie plus a guessed or
	// phished password could change it and sign the owner out everywhere.
	if sp, err := stepup.CheckIfSecondFactor(r.Context(), h.db, id, h.now()); err != nil {
		h.unavailable(w, err)
		return
	} else if sp != nil {
		problem.Write(w, sp)
		return
	}
	if hash != "" {
		// Changing a password needs the current one; setting a first
		// password (a Google-only account) needs a fresh sign-in instead.
		if !required(w, f, "current_password") {
			return
		}
		if verr := h.verifier.Verify(r.Context(), hash, f["current_password"]); verr != nil {
			if errors.Is(verr, password.ErrBusy) {
				h.busy(w)
				return
			}
			h.passwordRefused(w, id.UserID, "wrong_current_password")
			return
		}
	} else if !h.recentlyAuthenticated(r.Context(), id.SessionID) {
		problem.Write(w, problem.New(http.StatusUnauthorized, "reauth_required", "sign in again before setting a password"))
		return
	}
	if err := password.Check(f["new_password"], email); err != nil {
		p := problem.New(http.StatusBadRequest, "weak_password", err.Error())
		problem.Write(w, p)
		return
	}
	newHash, err := password.Hash(f["new_password"])
	if err != nil {
		h.unavailable(w, err)
		return
	}
	err = pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		// The user's row first, for update: a sign-in that checked the old
		// password waits for this change and is then refused, or started
		// its session or challenge before and is ended below
		// (session.Lock). A change committed since hash was read is refused
		// too: it must not be overwritten by one checked against the
		// password it replaced.
		// FOR NO KEY UPDATE: see mfa's lockUser (a key minted for the user
		// meanwhile takes FOR KEY SHARE here while holding its session).
		var current string
		if err := tx.QueryRow(r.Context(), "SELECT coalesce(password_hash, '') FROM users WHERE id = $1 FOR NO KEY UPDATE", id.UserID).Scan(&current); err != nil {
			return err
		}
		if subtle.ConstantTimeCompare([]byte(current), []byte(hash)) != 1 {
			return errPasswordChanged
		}
		if _, err := tx.Exec(r.Context(), "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1", id.UserID, newHash); err != nil {
			return err
		}
		// Every other session of the user ends with the old password.
		if _, err := tx.Exec(r.Context(), "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL", id.UserID, id.SessionID); err != nil {
			return err
		}
		// So does every sign-in still waiting for its second factor: it was
		// begun with the old password, and finishing it would start a
		// session (re-authenticated, at that) on a password that no longer
		// works. This session's own re-auth or registration may go on.
		_, err := tx.Exec(r.Context(), dropOtherChallenges, id.UserID, id.SessionID)
		return err
	})
	if errors.Is(err, errPasswordChanged) {
		h.passwordRefused(w, id.UserID, "password_changed")
		return
	}
	if err != nil {
		h.unavailable(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "user", ResourceID: id.UserID, Action: "update", Metadata: map[string]any{"changed": "password_hash"}})
	w.WriteHeader(http.StatusNoContent)
}

// errPasswordChanged: another password change committed since the current
// password was checked.
var errPasswordChanged = errors.New("the password changed since it was checked")

// dropOtherChallenges deletes a user's pending second-factor challenges
// but the re-auth and registration ones of session $2.
const dropOtherChallenges = `DELETE FROM mfa_challenges WHERE user_id = $1
AND NOT (purpose IN ('reauth', 'register') AND session_id IS NOT DISTINCT FROM $2::uuid)`

func (h *handler) recentlyAuthenticated(ctx context.Context, sessionID string) bool {
	at, err := session.ReauthAt(ctx, h.db, sessionID)
	return err == nil && !at.IsZero() && session.Fresh(at, h.now())
}
