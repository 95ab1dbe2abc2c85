package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reply"
	"github.com/glassmkr/guardian/shared/reqbody"
	"github.com/glassmkr/guardian/shared/stepup"
)

// MaxGrace bounds a rotation's grace window.
const MaxGrace = 24 * time.Hour

// MaxLifetime bounds a key's expiry.
const MaxLifetime = 2 * 365 * 24 * time.Hour

type handler struct {
	db     *pgxpool.Pool
	hasher *apikey.Hasher
	log    *zap.Logger
	now    func() time.Time
	// maxKeys is the most account keys a customer may have working
	// (plan.MaxAccountKeys).
	maxKeys int
}

// errKeyLimit is a mint refused at the customer's bound of working keys.
var errKeyLimit = errors.New("keys: the account has as many working keys as it may")

// keyLimitReached answers a mint refused by errKeyLimit.
func (h *handler) keyLimitReached(w http.ResponseWriter, rotating bool) {
	detail := fmt.Sprintf("this account has reached its limit of %d working account keys; revoke one first", h.maxKeys)
	if rotating {
		detail += ", or rotate with grace_seconds 0"
	}
	problem.Write(w, problem.New(http.StatusConflict, "limit_reached", detail))
}

// underKeyLimit returns errKeyLimit if customer already has h.maxKeys
// working account keys (a key rotated away works until its grace ends).
// It first takes a transaction-scoped lock per customer, so two mints
// cannot both see room for one.
func (h *handler) underKeyLimit(ctx context.Context, tx pgx.Tx, customer string) error {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('guardian.account_keys:' || $1, 0))", customer); err != nil {
		return fmt.Errorf("keys: lock the customer's keys: %w", err)
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = 'account'
		AND (revoked_at IS NULL OR revoked_at > now()) AND (expires_at IS NULL OR expires_at > now())`, customer).Scan(&n); err != nil {
		return fmt.Errorf("keys: count the customer's keys: %w", err)
	}
	if n >= h.maxKeys {
		return errKeyLimit
	}
	return nil
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/keys", h.list)
	mux.HandleFunc("POST /api/v1/keys", h.create)
	mux.HandleFunc("POST /api/v1/keys/{id}/rotate", h.rotate)
	mux.HandleFunc("DELETE /api/v1/keys/{id}", h.revoke)
	mux.HandleFunc("GET /settings/keys", h.page)
	return problem.NoQuery(mux)
}

// Key is a key as listed.
type Key struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Kind       string     `json:"kind"`
	Scope      *string    `json:"scope"`
	ServerID   *string    `json:"server_id"`
	Last4      string     `json:"last4"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	RotatedTo  *string    `json:"rotated_to,omitempty"`
	// Secret is the key itself: present only in the answer that minted it.
	Secret string `json:"key,omitempty"`
	// Ended: revoked_at has passed. A key rotated with grace has a
	// revoked_at still to come, and works (and can be revoked) until then.
	Ended bool `json:"-"`
	// Expired: expires_at has passed (and it is not Ended): it works no
	// more, and can be neither rotated nor usefully revoked.
	Expired bool `json:"-"`
}

func caller(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := identity.FromRequest(r)
	if !ok {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no identity"))
	}
	return id, ok
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	fnserve.LogFailure(h.log, "keys: database error", err)
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "keys cannot be read or changed right now"))
}

var keysPage = page.New("keys", `
<p>Keys are shown once, when they are made. Creating or rotating a key asks for your password if you have not confirmed it in the last five minutes.</p>
<fieldset><legend>Create a key</legend>
<form action="/api/v1/keys" data-api>
<label>Name <input name="name" required maxlength="200"></label>
<label>Scope <select name="scope"><option>read</option><option>write</option><option>admin</option></select></label>
<button type="submit" id="create-key">Create key</button>
</form>
<p id="new-key-note" hidden>Copy this key now. It will not be shown again.</p>
<output id="new-key" class="secret" hidden></output>
</fieldset>
<table><thead><tr><th>Name</th><th>Kind</th><th>Scope</th><th>Last 4</th><th>Created</th><th>Last used</th><th>Status</th><th></th></tr></thead><tbody>
{{range .}}<tr{{if or .Ended .Expired}} class="revoked"{{end}}><td>{{.Name}}</td><td>{{.Kind}}</td><td>{{if .Scope}}{{.Scope}}{{else}}server{{end}}</td><td><code>{{.Last4}}</code></td>
<td>{{.CreatedAt.UTC.Format "2006-01-02 15:04 MST"}}</td><td>{{if .LastUsedAt}}{{.LastUsedAt.UTC.Format "2006-01-02 15:04 MST"}}{{else}}never{{end}}</td>
<td>{{if .Ended}}revoked{{else if .Expired}}expired {{.ExpiresAt.UTC.Format "2006-01-02 15:04 MST"}}{{else if .RevokedAt}}rotated, works until {{.RevokedAt.UTC.Format "2006-01-02 15:04"}} UTC{{else if .ExpiresAt}}expires {{.ExpiresAt.UTC.Format "2006-01-02 15:04 MST"}}{{else}}active{{end}}</td>
<td>{{if not (or .RevokedAt .Expired)}}{{if eq .Kind "account"}}<form class="inline" action="/api/v1/keys/{{.ID}}/rotate" data-api><button type="submit">Rotate</button></form>{{end}}{{end}}
{{if not (or .Ended .Expired)}}<form class="inline" action="/api/v1/keys/{{.ID}}" data-api data-method="DELETE"><button type="submit">Revoke</button></form>{{end}}</td></tr>
{{else}}<tr><td colspan="8">No keys yet.</td></tr>{{end}}
</tbody></table>`)

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	keys, err := h.keysOf(r, id.CustomerID)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := page.Render(w, keysPage, "API keys", true, keys); err != nil {
		h.log.Warn("rendering the keys page failed", zap.Error(err))
	}
}

func (h *handler) keysOf(r *http.Request, customer string) ([]Key, error) {
	rows, err := h.db.Query(r.Context(), listQuery, customer)
	if err != nil {
		return nil, err
	}
	now := h.now()
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Key, error) {
		var k Key
		err := row.Scan(&k.ID, &k.Name, &k.Kind, &k.Scope, &k.ServerID, &k.Last4, &k.CreatedAt, &k.LastUsedAt, &k.ExpiresAt, &k.RevokedAt, &k.RotatedTo)
		k.Ended = endedBy(k.RevokedAt, now)
		k.Expired = !k.Ended && endedBy(k.ExpiresAt, now)
		return k, err
	})
}

// endedBy reports whether a key revoked (or expiring) at t (nil: not)
// has stopped working by now.
func endedBy(t *time.Time, now time.Time) bool {
	return t != nil && !t.After(now)
}

const listQuery = `SELECT k.id, k.name, k.kind, k.scope, k.server_id::text, k.last4, k.created_at, k.last_used_at, k.expires_at, k.revoked_at,
	(SELECT n.id::text FROM api_keys n WHERE n.rotated_from = k.id LIMIT 1)
FROM api_keys k WHERE k.customer_id = $1 ORDER BY k.created_at DESC, k.id`

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	keys, err := h.keysOf(r, id.CustomerID)
	if err != nil {
		h.fail(w, err)
		return
	}
	if keys == nil {
		keys = []Key{}
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "api_key", Action: "list", Metadata: map[string]any{"count": len(keys)}})
	reply.JSON(w, http.StatusOK, map[string]any{"items": keys})
}

// sessionStepUp admits only a session that re-authenticated recently;
// otherwise it has answered, refusing through refuse (which a rotation
// audits with the refusal's code).
func (h *handler) sessionStepUp(w http.ResponseWriter, r *http.Request, id identity.Identity, refuse func(*problem.Problem)) bool {
	if id.Kind != identity.KindSession {
		refuse(problem.New(http.StatusForbidden, "session_required", "keys are created and rotated from a signed-in session, not with a key"))
		return false
	}
	p, err := stepup.Check(r.Context(), h.db, id, h.now())
	if err != nil {
		h.fail(w, err)
		return false
	}
	if p != nil {
		refuse(p)
		return false
	}
	return true
}

func badRequest(w http.ResponseWriter, field, detail string) {
	problem.Write(w, invalidField(field, detail))
}

// invalidField is the 400 problem of one bad field of a request body.
func invalidField(field, detail string) *problem.Problem {
	p := problem.New(http.StatusBadRequest, "invalid_request", field+": "+detail)
	p.Extra = map[string]any{"field": field}
	return p
}

type createRequest struct {
	Name      *string `json:"name"`
	Scope     *string `json:"scope"`
	ExpiresAt *string `json:"expires_at"`
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok || !h.sessionStepUp(w, r, id, func(p *problem.Problem) { problem.Write(w, p) }) {
		return
	}
	var req createRequest
	if !reqbody.JSON(w, r, 8<<10, &req) {
		return
	}
	now := h.now()
	if req.Name == nil || strings.TrimSpace(*req.Name) == "" || utf8.RuneCountInString(*req.Name) > 200 || strings.ContainsFunc(*req.Name, unicode.IsControl) {
		badRequest(w, "name", "required, at most 200 characters, no control characters")
		return
	}
	if req.Scope == nil || (*req.Scope != "read" && *req.Scope != "write" && *req.Scope != "admin") {
		badRequest(w, "scope", "one of read, write, admin")
		return
	}
	var expires *time.Time
	if req.ExpiresAt != nil {
		t, err := time.Parse(time.RFC3339, *req.ExpiresAt)
		if err != nil || !t.After(now) || t.Sub(now) > MaxLifetime {
			badRequest(w, "expires_at", "an RFC 3339 time in the future, at most two years ahead")
			return
		}
		expires = &t
	}
	// Sessions of members have the write scope: they may not mint admin keys.
	if *req.Scope == "admin" && id.Scope != "admin" {
		problem.Write(w, needAdmin("only administrators may create admin keys"))
		return
	}
	k, err := h.mint(r, id, strings.TrimSpace(*req.Name), *req.Scope, expires, "")
	if errors.Is(err, account.ErrClosing) {
		accountClosing(w)
		return
	}
	if errors.Is(err, stepup.ErrSessionEnded) {
		problem.Write(w, stepup.Ended())
		return
	}
	if errors.Is(err, errKeyLimit) {
		h.keyLimitReached(w, false)
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: k.ID, Action: "create",
		Metadata: map[string]any{"scope": k.Scope, "name": k.Name, "expires_at": req.ExpiresAt}})
	reply.JSON(w, http.StatusCreated, k)
}

// mint creates an account key and returns it with its secret.
func (h *handler) mint(r *http.Request, id identity.Identity, name, scope string, expires *time.Time, rotatedFrom string) (Key, error) {
	secret, err := apikey.Generate(apikey.Account)
	if err != nil {
		return Key{}, err
	}
	hash := h.hasher.Sum(secret)
	var from any
	if rotatedFrom != "" {
		from = rotatedFrom
	}
	var creator any
	if id.UserID != "" {
		creator = id.UserID
	}
	k := Key{Name: name, Kind: "account", Scope: &scope, Last4: secret[len(secret)-4:], ExpiresAt: expires, Secret: secret}
	err = pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		if err := account.LockOpen(r.Context(), tx, id.CustomerID); err != nil {
			return err
		}
		if err := stepup.LockSession(r.Context(), tx, id); err != nil {
			return err
		}
		if err := h.underKeyLimit(r.Context(), tx, id.CustomerID); err != nil {
			return err
		}
		return tx.QueryRow(r.Context(), `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4, created_by, expires_at, rotated_from)
			VALUES ($1, 'account', $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at`,
			id.CustomerID, scope, name, hash[:], k.Last4, creator, expires, from).Scan(&k.ID, &k.CreatedAt)
	})
	return k, err
}

func accountClosing(w http.ResponseWriter) {
	problem.Write(w, problem.New(http.StatusConflict, "account_closing", "this account is scheduled for deletion; no new keys are issued"))
}

type rotateRequest struct {
	GraceSeconds *int64 `json:"grace_seconds"`
}

func (h *handler) rotate(w http.ResponseWriter, r *http.Request) {
	keyID := strings.ToLower(r.PathValue("id"))
	// A refused rotation is audited as one, of the key asked for, with
	// the refusal's code as its reason (refuse); a rotation done names
	// the new key below.
	audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: keyID, Action: "rotate"})
	refuse := func(p *problem.Problem) {
		audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: keyID, Action: "rotate",
			Metadata: map[string]any{"reason": p.Code}})
		problem.Write(w, p)
	}
	id, ok := caller(w, r)
	if !ok || !h.sessionStepUp(w, r, id, refuse) {
		return
	}
	if !identity.ValidID(keyID) {
		refuse(problem.New(http.StatusNotFound, "not_found", "no such key"))
		return
	}
	var req rotateRequest
	if p := reqbody.Parse(w, r, 8<<10, &req); p != nil {
		refuse(p)
		return
	}
	grace := time.Duration(0)
	if req.GraceSeconds != nil {
		// Compared in seconds: multiplied first, a huge value would wrap
		// to a negative duration and pass.
		if *req.GraceSeconds < 0 || *req.GraceSeconds > int64(MaxGrace/time.Second) {
			refuse(invalidField("grace_seconds", "from 0 to 86400"))
			return
		}
		grace = time.Duration(*req.GraceSeconds) * time.Second
	}
	var newKey Key
	var status int
	var refusal *problem.Problem
	err := pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		if err := account.LockOpen(r.Context(), tx, id.CustomerID); err != nil {
			return err
		}
		if err := stepup.LockSession(r.Context(), tx, id); err != nil {
			return err
		}
		var name, kind string
		var scope *string
		var expires, revokes *time.Time
		var expired bool
		var reason, createdBy *string
		// Judged on PostgreSQL's clock, as the edge judges keys.
		err := tx.QueryRow(r.Context(), `SELECT name, kind, scope, expires_at, revoked_at, revoked_reason, coalesce(expires_at <= now(), false), created_by::text FROM api_keys
			WHERE id = $1 AND customer_id = $2 AND (revoked_at IS NULL OR revoked_at > now()) FOR UPDATE`, keyID, id.CustomerID).Scan(&name, &kind, &scope, &expires, &revokes, &reason, &expired, &createdBy)
		if errors.Is(err, pgx.ErrNoRows) {
			status = http.StatusNotFound
			return nil
		}
		if err != nil {
			return err
		}
		if kind != "account" || scope == nil {
			status = http.StatusUnprocessableEntity
			return nil
		}
		if *scope == "admin" && id.Scope != "admin" {
			status = http.StatusForbidden
			return nil
		}
		// A rotation revokes the key it replaces, which is an
		// administrator's to do (DELETE needs admin): a member rotates
		// only the keys it created, not a colleague's or an admin's.
		if id.Scope != "admin" && (createdBy == nil || *createdBy != id.UserID) {
			refusal = needAdmin("only administrators may rotate keys others created")
			return nil
		}
		if revokes != nil && (reason == nil || *reason != "rotated") {
			// Revoked by a transaction that committed while this one
			// waited for the row (its time is after this one's now()).
			status = http.StatusNotFound
			return nil
		}
		if revokes != nil {
			// Rotated already, still in its grace window: a second rotation
			// (a retry after a lost answer, often) would mint another live
			// key and push the old key's end out again, past the 24 h bound.
			var successor string
			_ = tx.QueryRow(r.Context(), `SELECT id::text FROM api_keys WHERE rotated_from = $1 AND customer_id = $2
				ORDER BY created_at DESC LIMIT 1`, keyID, id.CustomerID).Scan(&successor)
			refusal = problem.New(http.StatusConflict, "already_rotated",
				"this key was already rotated and stops working at "+revokes.UTC().Format(time.RFC3339)+"; rotate its successor instead")
			if successor != "" {
				refusal.Extra = map[string]any{"successor_id": successor}
			}
			return nil
		}
		if expired {
			refusal = problem.New(http.StatusConflict, "key_expired", "an expired key cannot be rotated (its successor would be expired too); create a new key")
			return nil
		}
		// A rotation with grace leaves the old key working beside its
		// successor for a while, so it needs room for one more; without
		// grace the count stays as it was.
		if grace > 0 {
			if err := h.underKeyLimit(r.Context(), tx, id.CustomerID); err != nil {
				return err
			}
		}
		// On PostgreSQL's clock, as the edge and the revocation trigger
		// judge it: the function's clock may differ from it.
		if _, err := tx.Exec(r.Context(), "UPDATE api_keys SET revoked_at = now() + make_interval(secs => $2), revoked_reason = 'rotated' WHERE id = $1",
			keyID, grace.Seconds()); err != nil {
			return err
		}
		secret, err := apikey.Generate(apikey.Account)
		if err != nil {
			return err
		}
		hash := h.hasher.Sum(secret)
		newKey = Key{Name: name, Kind: "account", Scope: scope, Last4: secret[len(secret)-4:], ExpiresAt: expires, Secret: secret}
		var creator any
		if id.UserID != "" {
			creator = id.UserID
		}
		return tx.QueryRow(r.Context(), `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4, created_by, expires_at, rotated_from)
			VALUES ($1, 'account', $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at`,
			id.CustomerID, *scope, name, hash[:], newKey.Last4, creator, expires, keyID).Scan(&newKey.ID, &newKey.CreatedAt)
	})
	switch {
	case errors.Is(err, account.ErrClosing):
		audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: keyID, Action: "rotate", Metadata: map[string]any{"reason": "account_closing"}})
		accountClosing(w)
		return
	case errors.Is(err, stepup.ErrSessionEnded):
		refuse(stepup.Ended())
		return
	case errors.Is(err, errKeyLimit):
		audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: keyID, Action: "rotate", Metadata: map[string]any{"reason": "limit_reached"}})
		h.keyLimitReached(w, true)
		return
	case err != nil:
		h.fail(w, err)
		return
	case refusal != nil:
		refuse(refusal)
		return
	case status == http.StatusNotFound:
		refuse(problem.New(http.StatusNotFound, "not_found", "no such key, or it is revoked"))
		return
	case status == http.StatusUnprocessableEntity:
		refuse(problem.New(http.StatusUnprocessableEntity, "not_an_account_key", "collector keys are rotated with POST /api/v1/servers/{id}/rotate-key"))
		return
	case status == http.StatusForbidden:
		refuse(needAdmin("only administrators may rotate admin keys"))
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: newKey.ID, Action: "rotate",
		Metadata: map[string]any{"rotated_from": keyID, "grace_seconds": int64(grace.Seconds())}})
	reply.JSON(w, http.StatusCreated, newKey)
}

func (h *handler) revoke(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	keyID := strings.ToLower(r.PathValue("id"))
	if !identity.ValidID(keyID) {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such key"))
		return
	}
	var exists, revoked bool
	// revoked: the key worked until this revocation (not revoked, nor
	// past its expiry, before).
	err := h.db.QueryRow(r.Context(), `WITH k AS (SELECT id, coalesce(expires_at <= now(), false) AS expired FROM api_keys WHERE id = $1 AND customer_id = $2),
		u AS (UPDATE api_keys SET revoked_at = now(), revoked_reason = 'revoked'
		      WHERE id IN (SELECT id FROM k) AND (revoked_at IS NULL OR (revoked_reason = 'rotated' AND revoked_at > now())) RETURNING id)
		SELECT EXISTS (SELECT 1 FROM k), EXISTS (SELECT 1 FROM u) AND NOT EXISTS (SELECT 1 FROM k WHERE expired)`, keyID, id.CustomerID).Scan(&exists, &revoked)
	if err != nil {
		h.fail(w, err)
		return
	}
	if !exists {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such key"))
		return
	}
	a := audit.Annotation{ResourceType: "api_key", ResourceID: keyID, Action: "delete"}
	if !revoked {
		// Revoked, rotated out or expired before: answered alike (a
		// retry must not fail), but the log tells it from the revocation.
		a.Metadata = map[string]any{"already_ended": true}
	}
	audit.Annotate(w, a)
	w.WriteHeader(http.StatusNoContent)
}

// needAdmin is the 403 of an action only an administrator may take: code
// insufficient_scope with required_scope admin, as the edge's own.
func needAdmin(detail string) *problem.Problem {
	p := problem.New(http.StatusForbidden, "insufficient_scope", detail)
	p.Extra = map[string]any{"required_scope": "admin"}
	return p
}
