package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/oauth2"

	accountstate "github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/pgtext"
	"github.com/glassmkr/guardian/shared/session"
)

// afterSignIn is where a signed-in browser is sent.
const afterSignIn = "/settings/keys"

// confirmedMark is the fragment of the page a confirmation with Google
// (a step-up) returns to, once it succeeded.
const confirmedMark = "confirmed"

type handler struct {
	db         *pgxpool.Pool
	secret     []byte
	domain     string
	sealer     *sealer
	used       *usedStates
	idp        *idp
	signupOpen bool
	log        *zap.Logger
	now        func() time.Time
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /auth/google/start", h.start)
	mux.HandleFunc("GET /auth/google/callback", h.callback)
	return mux
}

// start sends the browser to the provider with a fresh state, nonce and
// PKCE challenge, kept in the sealed state cookie. A start that another
// site sent the browser to gets a page to continue from instead: a sign-in
// replaces the browser's session (or signs a new account up), and with
// Google answering silently for a signed-in user, a link or script
// elsewhere could do that without the user asking here.
func (h *handler) start(w http.ResponseWriter, r *http.Request) {
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		h.confirmStart(w, r)
		return
	}
	d, err := h.idp.get(r.Context())
	if err != nil {
		h.log.Warn("identity provider discovery failed", zap.Error(err))
		h.fail(w, failure{reason: "provider_unreachable"})
		return
	}
	state, err1 := randomToken(32)
	nonce, err2 := randomToken(32)
	now := h.now()
	expires := now.Add(stateTTL)
	q := r.URL.Query()
	f := flow{State: state, Nonce: nonce, Verifier: oauth2.GenerateVerifier(), Expires: expires.Unix(),
		Reauth: q.Get("reauth") == "1", Next: nextPage(q.Get("next"))}
	if id, ok := identity.FromRequest(r); ok && id.Kind == identity.KindSession && f.Reauth {
		f.User = id.UserID
	}
	value, err3 := h.sealer.seal(f)
	if err := errors.Join(err1, err2, err3); err != nil {
		h.log.Error("sealing the sign-in state failed", zap.Error(err))
		h.fail(w, failure{reason: "internal_error"})
		return
	}
	http.SetCookie(w, flowCookie(value, now, expires))
	w.Header().Set("Cache-Control", "no-store")
	opts := []oauth2.AuthCodeOption{oidc.Nonce(nonce), oauth2.S256ChallengeOption(f.Verifier)}
	if f.Reauth {
		// OpenID Connect's max_age=0: authenticate the user now, not from
		// the provider's own session, and say when (auth_time).
		opts = append(opts, oauth2.SetAuthURLParam("max_age", "0"))
	}
	http.Redirect(w, r, d.oauth.AuthCodeURL(state, opts...), http.StatusSeeOther)
}

var continuePage = page.New("oidc_continue", `
<p>Sign in to Guardian with your Google account?</p>
<p><a href="{{.Href}}" id="continue-google">Continue with Google</a> · <a href="/login">Sign in with a password</a></p>`)

// confirmStart answers a start another site sent the browser to with a
// link to the same start from this site (which Sec-Fetch-Site then calls
// same-origin). Only what start reads is carried over.
func (h *handler) confirmStart(w http.ResponseWriter, r *http.Request) {
	q := url.Values{}
	if r.URL.Query().Get("reauth") == "1" {
		q.Set("reauth", "1")
	}
	if next := nextPage(r.URL.Query().Get("next")); next != "" {
		q.Set("next", next)
	}
	href := "/auth/google/start"
	if len(q) > 0 {
		href += "?" + q.Encode()
	}
	w.Header().Set("Cache-Control", "no-store")
	// The link is built from checked, encoded values; html/template would
	// encode its query a second time.
	if err := page.RenderStatus(w, http.StatusOK, continuePage, "Sign in with Google", false, map[string]any{"Href": template.URL(href)}); err != nil {
		h.log.Warn("rendering the sign-in page failed", zap.Error(err))
	}
}

// nextPage is where a sign-in may return to: a dashboard page of this
// site, never another site (an open redirect) or an API route.
func nextPage(p string) string {
	if len(p) > 200 || !strings.HasPrefix(p, "/settings/") || strings.ContainsAny(p, "\\\x00\r\n") || strings.Contains(p, "//") {
		return ""
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Path != p || path.Clean(p) != p {
		return ""
	}
	return p
}

// idClaims are the ID token's claims Guardian reads.
type idClaims struct {
	Email         string          `json:"email"`
	EmailVerified json.RawMessage `json:"email_verified"`
	Name          string          `json:"name"`
	HostedDomain  string          `json:"hd"`
	AuthTime      int64           `json:"auth_time"`
	AuthorizedFor string          `json:"azp"`
}

// verified reads email_verified, a boolean (or, from some providers, the
// string "true").
func (c idClaims) verified() bool {
	s := string(c.EmailVerified)
	return s == "true" || s == `"true"`
}

func (h *handler) callback(w http.ResponseWriter, r *http.Request) {
	// The state cookie is good for one callback, whatever happens.
	http.SetCookie(w, clearFlowCookie())
	now := h.now()
	q := r.URL.Query()

	var value string
	if c, err := r.Cookie(stateCookie); err == nil {
		value = c.Value
	}
	f, err := h.sealer.open(value, now)
	if err != nil {
		h.fail(w, failure{reason: err.Error()})
		return
	}
	if !f.matches(q.Get("state")) {
		h.fail(w, failure{reason: "state_mismatch"})
		return
	}
	if !h.used.use(f.State, time.Unix(f.Expires, 0), now) {
		h.fail(w, failure{reason: "state_replayed"})
		return
	}
	if e := q.Get("error"); e != "" {
		h.fail(w, failure{reason: "provider_error", meta: map[string]any{"error": safeCode(e)}})
		return
	}
	code := q.Get("code")
	if code == "" || len(code) > 2048 {
		h.fail(w, failure{reason: "code_missing"})
		return
	}

	d, err := h.idp.get(r.Context())
	if err != nil {
		h.log.Warn("identity provider discovery failed", zap.Error(err))
		h.fail(w, failure{reason: "provider_unreachable"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	tok, err := d.exchange(ctx, h.idp.client, code, f.Verifier)
	if err != nil {
		h.log.Warn("code exchange failed", zap.Error(err))
		if errors.Is(err, errUnreachable) {
			h.fail(w, failure{reason: "provider_unreachable"})
		} else {
			h.fail(w, failure{reason: "exchange_failed"})
		}
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		h.fail(w, failure{reason: "id_token_missing"})
		return
	}
	idt, err := d.verify(ctx, raw)
	if err != nil {
		h.log.Warn("ID token refused", zap.Error(err))
		if errors.Is(err, errUnreachable) {
			h.fail(w, failure{reason: "provider_unreachable"})
		} else {
			h.fail(w, failure{reason: refusalOf(raw, h.idp.issuer, h.idp.clientID, now)})
		}
		return
	}
	var c idClaims
	if err := idt.Claims(&c); err != nil {
		h.fail(w, failure{reason: "id_token_invalid"})
		return
	}
	if reason := h.check(idt, f, c); reason != "" {
		h.fail(w, failure{reason: reason})
		return
	}
	g := googleUser{Subject: idt.Subject, Email: strings.ToLower(strings.TrimSpace(c.Email)), Name: c.Name, HostedDomain: c.HostedDomain}
	// A fresh Google sign-in re-authenticates a Google-only account, whose
	// only credential it is; an account with a password still confirms
	// the password for sensitive actions. Fresh means the provider says
	// when it authenticated the user, and that was within the window: a
	// token without auth_time may come from a silent sign-in on a browser
	// left signed in to Google, which must not pass for a confirmation.
	fresh := c.AuthTime != 0 && session.Fresh(time.Unix(c.AuthTime, 0), now)
	var authTime time.Time // when the provider authenticated the user, if it says
	if c.AuthTime != 0 {
		authTime = time.Unix(c.AuthTime, 0)
	}
	if f.Reauth {
		// A step-up asked for max_age=0: the provider must say it
		// authenticated the user just now.
		if c.AuthTime == 0 || !session.Fresh(time.Unix(c.AuthTime, 0), now) {
			h.fail(w, failure{reason: "reauth_not_fresh"})
			return
		}
		fresh = true
	}

	// This browser's session, if it has one, ends with the new one's start,
	// whoever's it is: as a password sign-in or re-auth does, a Google one
	// replaces the session, not adds one.
	// The edge checked the session cookie (guardian_auth, optional) and
	// names the session; the cookie itself never reaches a function.
	var replacing, signedIn, signedInCustomer string
	if id, ok := identity.FromRequest(r); ok && id.Kind == identity.KindSession {
		replacing, signedIn, signedInCustomer = id.SessionID, id.UserID, id.CustomerID
	}

	var a account
	var issued session.Issued
	// A user with a second factor gets no session yet: a challenge, and
	// the sign-in page's second step (functions/auth completes it).
	var factors mfa.Factors
	var challenge string
	var challengeExpires time.Time
	for attempt := 0; ; attempt++ {
		err = pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
			var err error
			if a, err = resolve(r.Context(), tx, g, h.signupOpen, signedIn); err != nil {
				return err
			}
			// A confirmation is the user's who asked for it (signed in
			// when it started, whatever became of that session since):
			// another Google account chosen at the provider signs nobody
			// in (nor up: the transaction is rolled back), and the
			// session stays as it was. One started signed out confirms
			// nobody.
			if f.Reauth && f.User == "" {
				return errReauthSignedOut
			}
			if f.Reauth && a.UserID != f.User {
				return errReauthOtherAccount
			}
			// Under the locks session.Start takes, before the factors are
			// read: a first factor being turned on (which locks the user
			// and ends the other sessions) is waited for and then asked
			// for, not missed by a session it cannot end.
			if _, err = session.Lock(r.Context(), tx, a.CustomerID, a.UserID); err != nil {
				return err
			}
			if factors, err = mfa.Enrolled(r.Context(), tx, a.UserID); err != nil {
				return err
			}
			if factors.Any() {
				challenge, challengeExpires, err = mfa.NewChallenge(r.Context(), tx, mfa.Challenge{UserID: a.UserID, CustomerID: a.CustomerID,
					Purpose: mfa.PurposeLogin, Method: mfa.MethodGoogle, Reauthed: !a.HasPassword && fresh, VerifiedAt: authTime, SessionID: replacing}, now)
				return err
			}
			issued, err = session.Start(r.Context(), tx, h.secret, session.Params{UserID: a.UserID, CustomerID: a.CustomerID,
				IP: identity.ClientIP(r), UserAgent: r.UserAgent(), Reauthed: !a.HasPassword && fresh, ReauthAt: authTime, AAL: session.AAL1, Replacing: replacing}, now)
			return err
		})
		if attempt == 0 && isUniqueViolation(err) {
			continue // a concurrent first sign-in won; the second pass finds its user
		}
		break
	}
	switch {
	case errors.Is(err, errSignupClosed):
		h.fail(w, failure{reason: "signup_closed"})
		return
	case errors.Is(err, accountstate.ErrClosing):
		// The deletion committed while this sign-in was under way.
		h.fail(w, failure{reason: errAccountClosing.Error(), customerID: a.CustomerID, userID: a.UserID})
		return
	case errors.Is(err, errReauthOtherAccount), errors.Is(err, errReauthSignedOut):
		// In the asking user's log; the other account's id is not its to
		// read (and one just signed up was rolled back).
		h.fail(w, failure{reason: err.Error(), customerID: signedInCustomer, userID: f.User})
		return
	case errors.Is(err, errAccountClosing), errors.Is(err, errEmailTaken), errors.Is(err, errLinkNeedsLogin):
		h.fail(w, failure{reason: err.Error(), customerID: a.CustomerID, userID: a.UserID})
		return
	case err != nil:
		fnserve.LogFailure(h.log, "google sign-in store unavailable", err)
		h.fail(w, failure{reason: "unavailable"})
		return
	}
	if challenge != "" {
		methods := factors.Methods()
		audit.Annotate(w, audit.Annotation{CustomerID: a.CustomerID, UserID: a.UserID, ResourceType: "mfa_challenge", Action: "create",
			Metadata: map[string]any{"purpose": mfa.PurposeLogin, "method": "google", "second_factor": "required", "methods": methods, "linked": a.Linked}})
		http.SetCookie(w, mfa.Cookie(challenge, challengeExpires, now))
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, "/login?"+url.Values{"step": {"mfa"}, "methods": {strings.Join(methods, ",")}}.Encode(), http.StatusSeeOther)
		return
	}
	audit.Annotate(w, audit.Annotation{CustomerID: a.CustomerID, UserID: a.UserID, ResourceType: "session", ResourceID: issued.ID, Action: "create",
		Metadata: map[string]any{"method": "google", "signed_up": a.SignedUp, "linked": a.Linked, "aal": session.AAL1}})
	http.SetCookie(w, session.Cookie(issued.Token, h.domain, issued.Expires, now))
	w.Header().Set("Cache-Control", "no-store")
	next := afterSignIn
	if f.Next != "" {
		next = f.Next
	}
	if f.Reauth {
		// The page the confirmation was asked on sends the call it kept
		// again, on this mark only (web/static/app.js).
		next += "#" + confirmedMark
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// check applies what go-oidc leaves to the client: the nonce, the
// authorized party, the subject and a verified e-mail address.
func (h *handler) check(idt *oidc.IDToken, f flow, c idClaims) string {
	if !equal(idt.Nonce, f.Nonce) {
		return "nonce_mismatch"
	}
	if len(idt.Audience) > 1 && c.AuthorizedFor != h.idp.clientID {
		return "wrong_audience"
	}
	if idt.Subject == "" || len(idt.Subject) > 255 || !pgtext.Valid(idt.Subject) {
		return "subject_invalid"
	}
	email := strings.TrimSpace(c.Email)
	if email == "" {
		return "email_missing"
	}
	if !c.verified() {
		return "email_unverified"
	}
	// The users table counts characters (3 to 320) and its text cannot
	// hold a NUL: checked here, a provider's odd address is a clear
	// refusal rather than a failed INSERT.
	if n := utf8.RuneCountInString(email); n < 3 || n > 320 || !strings.Contains(email, "@") || !pgtext.Valid(email) {
		return "email_invalid"
	}
	return ""
}

// refusalOf names why a token that did not verify was refused, for the
// audit log, from its unverified claims; the decision is already made.
func refusalOf(raw, issuer, clientID string, now time.Time) string {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "id_token_invalid"
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "id_token_invalid"
	}
	var c struct {
		Issuer   string          `json:"iss"`
		Audience json.RawMessage `json:"aud"`
		Expiry   float64         `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil {
		return "id_token_invalid"
	}
	var aud []string
	if json.Unmarshal(c.Audience, &aud) != nil {
		var one string
		_ = json.Unmarshal(c.Audience, &one)
		aud = []string{one}
	}
	switch {
	case c.Issuer != issuer:
		return "wrong_issuer"
	case !slices.Contains(aud, clientID):
		return "wrong_audience"
	case c.Expiry > 0 && float64(now.UnixNano())/1e9 > c.Expiry: // as floats: an int64 would wrap past 2^63
		return "id_token_expired"
	}
	return "id_token_signature"
}

var codeRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// safeCode keeps an OAuth error code for the audit log if it looks like one.
func safeCode(s string) string {
	if codeRE.MatchString(s) {
		return s
	}
	return "other"
}

// failure is a refused sign-in.
type failure struct {
	reason             string
	meta               map[string]any
	customerID, userID string
}

// outcome is what the browser is told about a failure.
type outcome struct {
	status  int
	title   string
	message string
}

func outcomeOf(reason string) outcome {
	switch reason {
	case "provider_unreachable":
		return outcome{http.StatusBadGateway, "Google sign-in unavailable", "Google cannot be reached right now. Try again in a minute."}
	case "unavailable", "internal_error":
		return outcome{http.StatusServiceUnavailable, "Sign-in unavailable", "Sign-in is temporarily unavailable. Try again in a minute."}
	case "signup_closed":
		return outcome{http.StatusForbidden, "Sign-up closed", "This Google account has no Guardian account, and sign-up is closed. Ask your administrator for access."}
	case "account_closing":
		return outcome{http.StatusForbidden, "Sign-in failed", "This account is being deleted; it can no longer be signed in to."}
	case "email_linked_elsewhere":
		return outcome{http.StatusConflict, "Sign-in failed", "This e-mail address belongs to a Guardian account that is linked to another Google account."}
	case "link_needs_password":
		return outcome{http.StatusForbidden, "Sign in with your password first",
			"This e-mail address belongs to a Guardian account that signs in with a password. Sign in with the password, then choose Sign in with Google in the same browser: Google sign-in is then added to the account."}
	case "email_unverified":
		return outcome{http.StatusBadRequest, "Sign-in failed", "Google says this account's e-mail address is not verified. Verify it with Google, then sign in again."}
	case "email_missing", "email_invalid":
		return outcome{http.StatusBadRequest, "Sign-in failed", "Google did not share a usable e-mail address for this account."}
	case "provider_error":
		return outcome{http.StatusBadRequest, "Sign-in failed", "Google did not complete the sign-in."}
	case "reauth_signed_out":
		return outcome{http.StatusBadRequest, "Confirmation failed", "This confirmation was not started from a signed-in session. Sign in, then do what you were doing again."}
	case "reauth_other_account":
		return outcome{http.StatusForbidden, "Confirmation failed", "Google answered for another account than the one signed in here. Confirm with the Google account you signed in with."}
	case "reauth_not_fresh":
		return outcome{http.StatusBadRequest, "Confirmation failed", "Google did not confirm that you signed in just now. Try again, and enter your Google password if asked."}
	case "state_missing", "state_invalid", "state_expired", "state_mismatch", "state_replayed", "code_missing":
		return outcome{http.StatusBadRequest, "Sign-in failed", "This sign-in link is invalid, expired or already used. Start the sign-in again from this browser."}
	}
	return outcome{http.StatusBadRequest, "Sign-in failed", "Google's answer could not be verified. Start the sign-in again."}
}

var failedPage = page.New("oidc_failed", `
<p>{{.Message}}</p>
<p><a href="/auth/google/start">Sign in with Google</a> · <a href="/login">Sign in with a password</a></p>`)

// fail answers a refused sign-in with a page, and tells the audit log why.
// Nothing of the tokens or of the provider's answer is shown.
func (h *handler) fail(w http.ResponseWriter, f failure) {
	meta := map[string]any{"method": "google", "reason": f.reason}
	for k, v := range f.meta {
		meta[k] = v
	}
	audit.Annotate(w, audit.Annotation{CustomerID: f.customerID, UserID: f.userID, ResourceType: "session", Action: "auth_failed", Metadata: meta})
	o := outcomeOf(f.reason)
	if o.status == http.StatusBadGateway || o.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "30")
	}
	if err := page.RenderStatus(w, o.status, failedPage, o.title, false, map[string]any{"Message": o.message}); err != nil {
		h.log.Warn("rendering the sign-in failure page failed", zap.Error(err))
	}
}
