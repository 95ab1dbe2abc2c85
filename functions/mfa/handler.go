package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reply"
	"github.com/glassmkr/guardian/shared/reqbody"
	"github.com/glassmkr/guardian/shared/stepup"
)

type handler struct {
	db  *pgxpool.Pool
	mfa *mfa.Service
	log *zap.Logger
	now func() time.Time
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/mfa", h.status)
	mux.HandleFunc("POST /api/v1/mfa/totp", h.beginTOTP)
	mux.HandleFunc("POST /api/v1/mfa/totp/confirm", h.confirmTOTP)
	mux.HandleFunc("DELETE /api/v1/mfa/totp", h.removeTOTP)
	mux.HandleFunc("POST /api/v1/mfa/webauthn/options", h.beginWebAuthn)
	mux.HandleFunc("POST /api/v1/mfa/webauthn", h.finishWebAuthn)
	mux.HandleFunc("DELETE /api/v1/mfa/webauthn/{id}", h.removeWebAuthn)
	mux.HandleFunc("POST /api/v1/mfa/recovery-codes", h.recoveryCodes)
	mux.HandleFunc("GET /settings/security", h.page)
	mux.HandleFunc("GET /api/v1/mfa/totp/qr", h.totpQR) // other methods: 405 with Allow
	// The QR image takes t, the page's cache-buster (a new key's image
	// must not be a browser's copy of the last one's); no other route
	// takes a parameter.
	root := http.NewServeMux()
	root.Handle("/", problem.NoQuery(mux))
	root.HandleFunc("GET /api/v1/mfa/totp/qr", h.totpQR)
	// POST only: DELETE would take it for a security key called options
	// (the {id} route), and the mux's 405 would allow DELETE.
	root.HandleFunc("/api/v1/mfa/webauthn/options", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			problem.NoQuery(mux).ServeHTTP(w, r)
			return
		}
		w.Header().Set("Allow", "POST")
		problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "use POST"))
	})
	return root
}

// caller returns the caller's session; the edge admits only sessions here.
func caller(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := identity.FromRequest(r)
	if !ok || id.Kind != identity.KindSession {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no session identity"))
		return id, false
	}
	return id, true
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	fnserve.LogFailure(h.log, "mfa: store error", err)
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "second factors cannot be read or changed right now"))
}

// stepUp admits a session that re-authenticated recently enough (with its
// second factor, once the user has one).
func (h *handler) stepUp(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := caller(w, r)
	if !ok {
		return id, false
	}
	return id, stepup.Admit(w, r, h.db, id, h.now(), h.fail)
}

// stepUpLost answers an action refused because the caller's session was
// ended or lost its step-up while the action waited for the user's lock
// (mfa.ErrStepUpLost): as the step-up check would have, had it run then.
func (h *handler) stepUpLost(w http.ResponseWriter, err error) bool {
	if !errors.Is(err, mfa.ErrStepUpLost) {
		return false
	}
	problem.Write(w, stepup.Required())
	return true
}

func (h *handler) email(r *http.Request, userID string) (string, error) {
	var email string
	err := h.db.QueryRow(r.Context(), "SELECT email FROM users WHERE id = $1", userID).Scan(&email)
	return email, err
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	st, err := h.mfa.StatusOf(r.Context(), id.UserID)
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa", ResourceID: id.UserID, Action: "read"})
	reply.JSON(w, http.StatusOK, st)
}

// qrURL is where the page's image of the app key being set up comes from
// (same origin: the pages' CSP allows no data: images).
const qrURL = "/api/v1/mfa/totp/qr"

func (h *handler) beginTOTP(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	email, err := h.email(r, id.UserID)
	if err != nil {
		h.fail(w, err)
		return
	}
	e, err := h.mfa.BeginTOTP(r.Context(), id.UserID, email)
	if errors.Is(err, mfa.ErrEnrolled) {
		problem.Write(w, problem.New(http.StatusConflict, "totp_enrolled", "an authenticator app is on already; remove it to set up another"))
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa_totp", ResourceID: id.UserID, Action: "create", Metadata: map[string]any{"state": "pending"}})
	reply.JSON(w, http.StatusCreated, map[string]any{"secret": e.Secret, "otpauth_url": e.URL, "qr_url": qrURL, "expires_at": e.ExpiresAt})
}

func (h *handler) totpQR(w http.ResponseWriter, r *http.Request) {
	if qe := problem.CheckQuery(r.URL.Query(), "t"); qe != nil {
		problem.Write(w, qe.Problem())
		return
	}
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	email, err := h.email(r, id.UserID)
	if err != nil {
		h.fail(w, err)
		return
	}
	png, err := h.mfa.TOTPQRCode(r.Context(), id.UserID, email)
	if errors.Is(err, mfa.ErrNoEnrolment) {
		problem.Write(w, problem.New(http.StatusNotFound, "no_enrolment", "no authenticator app is being set up"))
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa_totp", ResourceID: id.UserID, Action: "read", Metadata: map[string]any{"state": "pending"}})
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(png)))
	_, _ = w.Write(png)
}

// refused answers a second factor that was not accepted (a wrong code
// while setting up an app).
func (h *handler) refused(w http.ResponseWriter, err error, resource, id string) bool {
	var le *mfa.LockedError
	var refusal *mfa.Refusal
	switch {
	case errors.As(err, &le):
		audit.Annotate(w, audit.Annotation{ResourceType: resource, ResourceID: id, Action: "auth_failed", Metadata: map[string]any{"reason": "second_factor_locked"}})
		w.Header().Set("Retry-After", strconv.Itoa(le.RetryAfter(h.now())))
		problem.Write(w, problem.New(http.StatusTooManyRequests, "too_many_attempts", "too many wrong codes; try again later"))
	case errors.As(err, &refusal):
		audit.Annotate(w, audit.Annotation{ResourceType: resource, ResourceID: id, Action: "auth_failed", Metadata: map[string]any{"reason": refusal.Reason}})
		p := problem.New(http.StatusUnprocessableEntity, "wrong_code", "that is not the app's current code; check the phone's clock and try the next code")
		p.Extra = map[string]any{"field": "code"}
		problem.Write(w, p)
	default:
		return false
	}
	return true
}

func (h *handler) confirmTOTP(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	var req struct {
		Code string `json:"code"`
	}
	if !reqbody.JSON(w, r, 1<<10, &req) {
		return
	}
	first, err := h.mfa.ConfirmTOTP(r.Context(), id.UserID, req.Code, identity.ClientIP(r), id.SessionID)
	if h.refused(w, err, "mfa_totp", id.UserID) {
		return
	}
	if errors.Is(err, mfa.ErrNoEnrolment) {
		problem.Write(w, problem.New(http.StatusConflict, "no_enrolment", "no authenticator app is being set up, or the setup expired; start again"))
		return
	}
	if h.stepUpLost(w, err) {
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	meta := map[string]any{"state": "enabled"}
	out := map[string]any{"enabled": true}
	firstFactor(first, meta, out)
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa_totp", ResourceID: id.UserID, Action: "update", Metadata: meta})
	reply.JSON(w, http.StatusOK, out)
}

// firstFactor records what adding the user's first factor did besides (the
// recovery codes issued, shown once in out; the other sessions ended, so
// that a session stolen before cannot outlive the factor) in the audit
// row's meta. The factor, the codes and the ended sessions are one
// transaction (shared/mfa): none without the others.
func firstFactor(first *mfa.FirstFactor, meta, out map[string]any) {
	if first == nil {
		meta["recovery_codes_issued"] = 0
		return
	}
	meta["recovery_codes_issued"] = len(first.RecoveryCodes)
	meta["other_sessions_ended"] = first.SessionsEnded
	out["recovery_codes"] = first.RecoveryCodes
}

func (h *handler) removeTOTP(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	removed, err := h.mfa.RemoveTOTP(r.Context(), id.UserID, id.SessionID)
	if h.stepUpLost(w, err) {
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	if !removed {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no authenticator app is on"))
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa_totp", ResourceID: id.UserID, Action: "delete"})
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) webauthnOff(w http.ResponseWriter) {
	problem.Write(w, problem.New(http.StatusConflict, "webauthn_unavailable", "security keys need the site to be served on a domain name"))
}

func (h *handler) beginWebAuthn(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	if !reqbody.JSON(w, r, 1<<10, &struct{}{}) {
		return
	}
	reg, err := h.mfa.BeginRegistration(r.Context(), id.UserID, id.CustomerID, id.SessionID)
	if errors.Is(err, mfa.ErrWebAuthnOff) {
		h.webauthnOff(w)
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "webauthn_credential", Action: "read", Metadata: map[string]any{"state": "registration_begun"}})
	reply.JSON(w, http.StatusOK, reg)
}

// maxRegistration bounds a registration body: attestation "none" is small,
// but an authenticator may still send its certificate chain.
const maxRegistration = 64 << 10

func (h *handler) finishWebAuthn(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	var req struct {
		Ceremony   string          `json:"ceremony"`
		Name       string          `json:"name"`
		Credential json.RawMessage `json:"credential"`
	}
	if !reqbody.JSON(w, r, maxRegistration, &req) {
		return
	}
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > mfa.MaxNameLen || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		p := problem.New(http.StatusBadRequest, "invalid_request", "name: required, at most 100 bytes, no control characters")
		p.Extra = map[string]any{"field": "name"}
		problem.Write(w, p)
		return
	}
	cred, first, err := h.mfa.FinishRegistration(r.Context(), id.UserID, id.SessionID, req.Ceremony, name, req.Credential)
	switch {
	case errors.Is(err, mfa.ErrWebAuthnOff):
		h.webauthnOff(w)
		return
	case errors.Is(err, mfa.ErrChallenge):
		problem.Write(w, problem.New(http.StatusConflict, "ceremony_expired", "this registration expired or was used; start again"))
		return
	case h.stepUpLost(w, err):
		return
	case errors.Is(err, mfa.ErrBadCredential):
		h.log.Info("security key registration refused", zap.Error(err))
		audit.Annotate(w, audit.Annotation{ResourceType: "webauthn_credential", Action: "auth_failed", Metadata: map[string]any{"reason": "registration_refused"}})
		problem.Write(w, problem.New(http.StatusBadRequest, "invalid_credential", "the security key's answer did not verify, or the key is registered already"))
		return
	case err != nil:
		h.fail(w, err)
		return
	}
	meta := map[string]any{"name": cred.Name}
	out := map[string]any{"id": cred.ID, "name": cred.Name, "created_at": cred.CreatedAt, "last_used_at": nil}
	firstFactor(first, meta, out)
	audit.Annotate(w, audit.Annotation{ResourceType: "webauthn_credential", ResourceID: cred.ID, Action: "create", Metadata: meta})
	reply.JSON(w, http.StatusCreated, out)
}

func (h *handler) removeWebAuthn(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	credID := strings.ToLower(r.PathValue("id"))
	removed := false
	if identity.ValidID(credID) {
		var err error
		removed, err = h.mfa.RemoveWebAuthn(r.Context(), id.UserID, id.SessionID, credID)
		if h.stepUpLost(w, err) {
			return
		}
		if err != nil {
			h.fail(w, err)
			return
		}
	}
	if !removed {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such security key"))
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "webauthn_credential", ResourceID: credID, Action: "delete"})
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) recoveryCodes(w http.ResponseWriter, r *http.Request) {
	id, ok := h.stepUp(w, r)
	if !ok {
		return
	}
	codes, err := h.mfa.NewRecoveryCodes(r.Context(), id.UserID, id.SessionID)
	if h.stepUpLost(w, err) {
		return
	}
	if errors.Is(err, mfa.ErrNotEnrolled) {
		problem.Write(w, problem.New(http.StatusConflict, "no_second_factor", "recovery codes come with a second factor; set one up first"))
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "mfa_recovery_codes", ResourceID: id.UserID, Action: "rotate", Metadata: map[string]any{"count": len(codes)}})
	reply.JSON(w, http.StatusCreated, map[string]any{"recovery_codes": codes})
}

var securityPage = page.New("security", `
<p>A second factor protects your account when your password is not enough: signing in, and confirming sensitive actions, asks for it too.
Changing anything here asks for your password (and second factor) if you have not confirmed them in the last five minutes.</p>
<section aria-labelledby="totp-title"><h2 id="totp-title">Authenticator app</h2>
{{if .TOTP.Enabled}}<p id="totp-status">On since {{.TOTP.Since.UTC.Format "2006-01-02 15:04 MST"}}{{if .TOTP.LastUsedAt}}, last used {{.TOTP.LastUsedAt.UTC.Format "2006-01-02 15:04 MST"}}{{end}}.</p>
<form class="inline" action="/api/v1/mfa/totp" data-api data-method="DELETE"><button type="submit" id="remove-totp">Remove the app</button></form>
{{else}}<p id="totp-status">Off.</p>
<form action="/api/v1/mfa/totp" data-api><button type="submit" id="setup-totp">Set up an authenticator app</button></form>
<div id="totp-setup" hidden>
<p>Scan this code with the app, or type the key into it. The key is shown only now.</p>
<p><img id="totp-qr" alt="QR code of the key" width="256" height="256"></p>
<p>Key: <code id="totp-secret" class="secret"></code></p>
<form action="/api/v1/mfa/totp/confirm" data-api>
<label>Code from the app <input name="code" autocomplete="one-time-code" inputmode="numeric" pattern="[0-9 ]{6,7}" required></label>
<button type="submit" id="confirm-totp">Turn on</button>
</form>
</div>{{end}}
</section>
<section aria-labelledby="keys-title"><h2 id="keys-title">Security keys and passkeys</h2>
<table><thead><tr><th>Name</th><th>Added</th><th>Last used</th><th></th></tr></thead><tbody id="webauthn-keys">
{{range .WebAuthn}}<tr><td>{{.Name}}</td><td>{{.CreatedAt.UTC.Format "2006-01-02 15:04 MST"}}</td><td>{{if .LastUsedAt}}{{.LastUsedAt.UTC.Format "2006-01-02 15:04 MST"}}{{else}}never{{end}}</td>
<td><form class="inline" action="/api/v1/mfa/webauthn/{{.ID}}" data-api data-method="DELETE"><button type="submit">Remove</button></form></td></tr>
{{else}}<tr><td colspan="4">No security keys yet.</td></tr>{{end}}
</tbody></table>
{{if .WebAuthnAvailable}}<form action="/api/v1/mfa/webauthn/options" data-webauthn-register="/api/v1/mfa/webauthn">
<label>Name <input name="name" required maxlength="100" placeholder="e.g. desk key"></label>
<button type="submit" id="add-key">Add a security key</button>
</form>{{else}}<p>Security keys need the site to be served on a domain name.</p>{{end}}
</section>
<section aria-labelledby="recovery-title"><h2 id="recovery-title">Recovery codes</h2>
<p id="recovery-left">{{.RecoveryCodesLeft}} unused. Each works once, in place of a code, if you lose your app or keys.</p>
{{if or .TOTP.Enabled .WebAuthn}}<form action="/api/v1/mfa/recovery-codes" data-api><button type="submit" id="new-codes">Make new recovery codes</button></form>{{end}}
<div id="recovery" hidden>
<p>Keep these codes somewhere safe. They will not be shown again.</p>
<ol id="recovery-codes" class="secret"></ol>
<p><a href="/settings/security" id="recovery-done">Done</a></p>
</div>
</section>`)

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	st, err := h.mfa.StatusOf(r.Context(), id.UserID)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := page.Render(w, securityPage, "Security", true, st); err != nil {
		h.log.Warn("rendering the security page failed", zap.Error(err))
	}
}
