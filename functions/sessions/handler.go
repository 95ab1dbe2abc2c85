package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reply"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/stepup"
)

// DeletionDelay is how long after a deletion request the account's data
// is purged (functions/jobs/account-purge, hourly, acts once delete_after
// has passed). The security posture promises the data gone within 30
// days, and its backups expire on their own schedules: ClickHouse sets
// after 30 days, PostgreSQL's with the fourth newer weekly full (at most
// 28 days). Only a purge within hours of the request keeps every copy
// within the 30 days; a deletion cannot be called off, so a longer delay
// would protect nobody and only keep the data longer.
const DeletionDelay = "1 hour"

type handler struct {
	db  *pgxpool.Pool
	log *zap.Logger
	now func() time.Time
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/sessions", h.list)
	mux.HandleFunc("DELETE /api/v1/sessions/{id}", h.revoke)
	mux.HandleFunc("POST /api/v1/sessions/revoke-others", h.revokeOthers)
	// Not a session called revoke-others (the {id} route): 405, and no
	// audit row of a session deleted.
	mux.HandleFunc("DELETE /api/v1/sessions/revoke-others", fallback)
	mux.HandleFunc("DELETE /api/v1/account", h.deleteAccount)
	mux.HandleFunc("GET /settings/sessions", h.page)
	// fnserve would answer the rest too, but the mux's 405 for GET
	// /api/v1/sessions/revoke-others would allow DELETE (the {id} route).
	mux.HandleFunc("/", fallback)
	return problem.NoQuery(mux)
}

// fallback answers requests no route took: 405 with Allow on a known
// path, else 404. A GET route serves HEAD too, so its Allow says both,
// as the mux's own 405 would.
func fallback(w http.ResponseWriter, r *http.Request) {
	allow := ""
	switch p := r.URL.Path; {
	case p == "/api/v1/sessions", p == "/settings/sessions":
		allow = "GET, HEAD"
	case p == "/api/v1/sessions/revoke-others":
		allow = "POST"
	case p == "/api/v1/account":
		allow = "DELETE"
	case strings.HasPrefix(p, "/api/v1/sessions/") && isSegment(p[len("/api/v1/sessions/"):]):
		allow = "DELETE"
	}
	if allow == "" {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such resource"))
		return
	}
	w.Header().Set("Allow", allow)
	problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "use "+allow))
}

// isSegment reports whether s is one non-empty path segment, as the {id}
// wildcard matches: "/api/v1/sessions/" names no session, so DELETE on it
// is 404, not a 405 that allows DELETE.
func isSegment(s string) bool { return s != "" && !strings.Contains(s, "/") }

// Session is a session as listed.
type Session struct {
	ID         string    `json:"id"`
	CreatedAt  time.Time `json:"created_at"`
	LastSeenAt time.Time `json:"last_seen_at"`
	SourceIP   *string   `json:"source_ip"`
	UserAgent  *string   `json:"user_agent"`
	Current    bool      `json:"current"`
	// SecondFactor: the sign-in (or the latest re-authentication) that
	// made the session passed a second factor (sessions.aal 2). A session
	// without one, on a user who has a factor, cannot do the sensitive
	// actions (shared/stepup): the list tells the user which.
	SecondFactor bool `json:"second_factor"`
}

// caller returns the caller's session; the routes admit only sessions, so
// anything else is a configuration error.
func caller(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := identity.FromRequest(r)
	if !ok || id.Kind != identity.KindSession || id.UserID == "" || id.SessionID == "" {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no session identity"))
		return id, false
	}
	return id, true
}

// whileLive runs change in a transaction that first locks the caller's
// user row with lock (FOR NO KEY UPDATE to end sessions, FOR SHARE to
// schedule the account's deletion), and then finds the caller's session
// still live (stepup.ErrSessionEnded otherwise). A password change or a
// first second factor ends the user's other sessions under that row's
// FOR NO KEY UPDATE, so it commits wholly before the change, which then
// finds its session ended and does nothing, or wholly after it: a thief
// signed out by the owner's new password must not still sign the owner
// out everywhere or schedule the account's deletion. Ending sessions
// takes the row as a password change does, so two sessions of a user
// ending each other take turns too, the second finding itself ended.
// Scheduling the deletion only shares it: it then locks the customer's
// row, which a sign-in holds FOR SHARE while it waits to share the
// user's; with the user's row held exclusively, the two would deadlock.
// The session's own row is not locked: two sessions each holding their
// own while ending the other's would deadlock.
//
// The session is checked again once change is done: change may have
// waited for a row another request held (the customer's, which another
// admin's deletion of the account locks before it ends every other
// session of the account, this one's included, without this user's row),
// and a session that request ended must change nothing either.
func (h *handler) whileLive(r *http.Request, id identity.Identity, lock string, change func(pgx.Tx) error) error {
	return pgx.BeginFunc(r.Context(), h.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(r.Context(), "SELECT 1 FROM users WHERE id = $1 "+lock, id.UserID); err != nil {
			return fmt.Errorf("lock the user: %w", err)
		}
		if err := stillLive(r.Context(), tx, id.SessionID); err != nil {
			return err
		}
		if err := change(tx); err != nil {
			return err
		}
		return stillLive(r.Context(), tx, id.SessionID)
	})
}

// stillLive returns stepup.ErrSessionEnded unless session id is live as
// of this statement (READ COMMITTED: every commit before it counts).
func stillLive(ctx context.Context, tx pgx.Tx, id string) error {
	var live bool
	err := tx.QueryRow(ctx, "SELECT true FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()", id).Scan(&live)
	if errors.Is(err, pgx.ErrNoRows) {
		return stepup.ErrSessionEnded
	}
	if err != nil {
		return fmt.Errorf("re-check the session: %w", err)
	}
	return nil
}

// Locks whileLive takes on the caller's user row.
const (
	lockToEnd      = "FOR NO KEY UPDATE"
	lockToSchedule = "FOR SHARE"
)

// failed answers err, a change's failure: a session ended while the
// request ran (whileLive), or the database's.
func (h *handler) failed(w http.ResponseWriter, err error) {
	if errors.Is(err, stepup.ErrSessionEnded) {
		problem.Write(w, stepup.Ended())
		return
	}
	h.fail(w, err)
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	fnserve.LogFailure(h.log, "sessions: database error", err)
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "sessions cannot be read or changed right now"))
}

// live is the condition of a session that still works.
const live = `revoked_at IS NULL AND expires_at > now()`

const listQuery = `SELECT id, created_at, last_seen_at, host(source_ip), user_agent, aal FROM sessions
WHERE user_id = $1 AND customer_id = $2 AND ` + live + `
ORDER BY created_at DESC, id`

// sessionsOf lists the live sessions of the caller's user.
func (h *handler) sessionsOf(r *http.Request, id identity.Identity) ([]Session, error) {
	rows, err := h.db.Query(r.Context(), listQuery, id.UserID, id.CustomerID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Session, error) {
		var s Session
		var aal int16
		err := row.Scan(&s.ID, &s.CreatedAt, &s.LastSeenAt, &s.SourceIP, &s.UserAgent, &aal)
		s.Current, s.SecondFactor = s.ID == id.SessionID, aal >= session.AAL2
		return s, err
	})
}

var sessionsPage = page.New("sessions", `
<p>These are the places where you are signed in. Signing a session out ends it at once.</p>
<form action="/api/v1/sessions/revoke-others" data-api><button type="submit" id="revoke-others">Sign out of all other sessions</button></form>
<table><thead><tr><th>Device</th><th>Address</th><th>Signed in</th><th>Second factor</th><th>Last seen</th><th></th></tr></thead><tbody>
{{range .}}<tr><td>{{if .UserAgent}}{{.UserAgent}}{{else}}unknown{{end}}</td><td>{{if .SourceIP}}{{.SourceIP}}{{end}}</td>
<td>{{.CreatedAt.UTC.Format "2006-01-02 15:04 MST"}}</td><td class="factor">{{if .SecondFactor}}used{{else}}not used{{end}}</td><td>{{.LastSeenAt.UTC.Format "2006-01-02 15:04 MST"}}</td>
<td>{{if .Current}}this session{{else}}<form class="inline" action="/api/v1/sessions/{{.ID}}" data-api data-method="DELETE"><button type="submit">Sign out</button></form>{{end}}</td></tr>
{{end}}</tbody></table>`)

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	sessions, err := h.sessionsOf(r, id)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := page.Render(w, sessionsPage, "Sessions", true, sessions); err != nil {
		h.log.Warn("rendering the sessions page failed", zap.Error(err))
	}
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	sessions, err := h.sessionsOf(r, id)
	if err != nil {
		h.fail(w, err)
		return
	}
	if sessions == nil {
		sessions = []Session{}
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", Action: "list", Metadata: map[string]any{"count": len(sessions)}})
	reply.JSON(w, http.StatusOK, map[string]any{"items": sessions})
}

// revokeQuery ends one session of the user; a session of the user that
// has already ended answers as revoked (the request is idempotent), any
// other id as unknown.
const revokeQuery = `WITH s AS (SELECT id FROM sessions WHERE id = $1 AND user_id = $2 AND customer_id = $3),
	u AS (UPDATE sessions SET revoked_at = now() WHERE id IN (SELECT id FROM s) AND revoked_at IS NULL RETURNING id)
SELECT EXISTS (SELECT 1 FROM s), EXISTS (SELECT 1 FROM u)`

func (h *handler) revoke(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	sid := strings.ToLower(r.PathValue("id"))
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: sid, Action: "delete"})
	if !identity.ValidID(sid) {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such session"))
		return
	}
	var exists, revoked bool
	if sid == id.SessionID {
		// Signing out needs nothing.
		if err := h.db.QueryRow(r.Context(), revokeQuery, sid, id.UserID, id.CustomerID).Scan(&exists, &revoked); err != nil {
			h.fail(w, err)
			return
		}
	} else {
		if !h.steppedUp(w, r, id) {
			return
		}
		if err := h.whileLive(r, id, lockToEnd, func(tx pgx.Tx) error {
			return tx.QueryRow(r.Context(), revokeQuery, sid, id.UserID, id.CustomerID).Scan(&exists, &revoked)
		}); err != nil {
			h.failed(w, err)
			return
		}
	}
	if !exists {
		problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such session"))
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", ResourceID: sid, Action: "delete",
		Metadata: map[string]any{"current": sid == id.SessionID, "was_live": revoked}})
	w.WriteHeader(http.StatusNoContent)
}

const revokeOthersQuery = `UPDATE sessions SET revoked_at = now()
WHERE user_id = $1 AND customer_id = $2 AND id <> $3 AND ` + live

func (h *handler) revokeOthers(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", Action: "delete"})
	if !h.steppedUp(w, r, id) {
		return
	}
	var n int64
	if err := h.whileLive(r, id, lockToEnd, func(tx pgx.Tx) error {
		tag, err := tx.Exec(r.Context(), revokeOthersQuery, id.UserID, id.CustomerID, id.SessionID)
		n = tag.RowsAffected()
		return err
	}); err != nil {
		h.failed(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "session", Action: "delete", Metadata: map[string]any{"revoked": n, "kept": id.SessionID}})
	reply.JSON(w, http.StatusOK, map[string]int64{"revoked": n})
}

// steppedUp answers and returns false unless the caller's password (and
// second factor, if any) was confirmed within the re-auth window. Ending
// another session needs it: otherwise a stolen cookie could end every
// session its owner starts, a new one a second after sign-in, and keep
// the owner from reaching the session list to end the thief's. An owner
// who has just signed in passes; an old stolen cookie does not. Ending
// the caller's own session is signing out and needs nothing.
func (h *handler) steppedUp(w http.ResponseWriter, r *http.Request, id identity.Identity) bool {
	return stepup.Admit(w, r, h.db, id, h.now(), h.fail)
}

const (
	// scheduleDeletion sets the dates once; a repeated request finds them.
	scheduleDeletion = `UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '` + DeletionDelay + `'
WHERE id = $1 AND deletion_requested_at IS NULL RETURNING delete_after`
	scheduledDeletion = `SELECT delete_after FROM customers WHERE id = $1`
	revokeAllKeys     = `UPDATE api_keys SET revoked_at = now(), revoked_reason = 'account_deletion'
WHERE customer_id = $1 AND (revoked_at IS NULL OR (revoked_reason = 'rotated' AND revoked_at > now()))`
	revokeOtherSessions = `UPDATE sessions SET revoked_at = now() WHERE customer_id = $1 AND id <> $2 AND revoked_at IS NULL`
)

func (h *handler) deleteAccount(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "customer", Action: "delete"})
	if id.Scope != "admin" {
		p := problem.New(http.StatusForbidden, "insufficient_scope", "only administrators may delete the account")
		p.Extra = map[string]any{"required_scope": "admin"}
		problem.Write(w, p)
		return
	}
	if !h.steppedUp(w, r, id) {
		return
	}
	var deleteAfter *time.Time
	var again bool
	var keys, sessions int64
	err := h.whileLive(r, id, lockToSchedule, func(tx pgx.Tx) error {
		again = false
		err := tx.QueryRow(r.Context(), scheduleDeletion, id.CustomerID).Scan(&deleteAfter)
		if errors.Is(err, pgx.ErrNoRows) {
			again = true
			err = tx.QueryRow(r.Context(), scheduledDeletion, id.CustomerID).Scan(&deleteAfter)
		}
		if err != nil {
			return err
		}
		// Again on a repeated request: nothing may have slipped in since.
		tag, err := tx.Exec(r.Context(), revokeAllKeys, id.CustomerID)
		if err != nil {
			return err
		}
		keys = tag.RowsAffected()
		if tag, err = tx.Exec(r.Context(), revokeOtherSessions, id.CustomerID, id.SessionID); err != nil {
			return err
		}
		sessions = tag.RowsAffected()
		return nil
	})
	if err != nil || deleteAfter == nil {
		if err == nil {
			err = errors.New("customer has no deletion date")
		}
		h.failed(w, err)
		return
	}
	at := deleteAfter.UTC().Format(time.RFC3339)
	audit.Annotate(w, audit.Annotation{ResourceType: "customer", Action: "delete", Metadata: map[string]any{
		"delete_after": at, "already_requested": again, "revoked_key_count": keys, "revoked_session_count": sessions,
	}})
	reply.JSON(w, http.StatusAccepted, map[string]string{"delete_after": at})
}
