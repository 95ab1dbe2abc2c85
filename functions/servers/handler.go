package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reply"
	"github.com/glassmkr/guardian/shared/reqbody"
	"github.com/glassmkr/guardian/shared/stepup"
)

// maxBody bounds an enrollment body: 32 tags of 64 characters and the
// other members fit many times over.
const maxBody = 16 << 10

type handler struct {
	db        *pgxpool.Pool
	st        *store
	ingestURL string
	log       *zap.Logger
	now       func() time.Time
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/servers", h.list)
	mux.HandleFunc("POST /api/v1/servers", h.create)
	mux.HandleFunc("DELETE /api/v1/servers/{id}", h.delete)
	mux.HandleFunc("POST /api/v1/servers/{id}/rotate-key", h.rotate)
	// A path or method no route takes is answered by fnserve (404 or 405
	// with Allow, problem+json).
	return problem.NoQuery(mux)
}

// Server is a server as listed.
type Server struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Hostname  string    `json:"hostname"`
	MachineID *string   `json:"machine_id"`
	Tags      []string  `json:"tags"`
	CreatedAt time.Time `json:"created_at"`
}

// enrollResponse is what collector agents read after enrolling.
type enrollResponse struct {
	Server struct {
		ID           string `json:"id"`
		Name         string `json:"name"`
		CollectorKey string `json:"collector_key"`
	} `json:"server"`
	IngestURL  string `json:"ingest_url"`
	Reenrolled bool   `json:"reenrolled"`
}

// caller returns the identity the edge attached; the route admits only
// sessions and account keys, so anything else is a configuration error.
func caller(w http.ResponseWriter, r *http.Request) (identity.Identity, bool) {
	id, ok := identity.FromRequest(r)
	if !ok || (id.Kind != identity.KindSession && id.Kind != identity.KindAccount) {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no session or account key identity"))
		return id, false
	}
	return id, true
}

// scopeRank orders the scopes: each includes the ones below it.
var scopeRank = map[string]int{"read": 1, "write": 2, "admin": 3}

// needScope repeats the edge's scope check for the routes that need admin,
// so a path the edge matched differently still cannot reach them.
func needScope(w http.ResponseWriter, id identity.Identity, scope string) bool {
	if scopeRank[id.Scope] >= scopeRank[scope] {
		return true
	}
	p := problem.New(http.StatusForbidden, "insufficient_scope", "this needs the "+scope+" scope")
	p.Extra = map[string]any{"required_scope": scope}
	problem.Write(w, p)
	return false
}

// stepUp admits keys (judged by scope at the edge) and sessions whose
// password was confirmed in the last five minutes.
func (h *handler) stepUp(w http.ResponseWriter, r *http.Request, id identity.Identity) bool {
	return stepup.Admit(w, r, h.db, id, h.now(), h.fail)
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	fnserve.LogFailure(h.log, "servers: database error", err)
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "servers cannot be read or changed right now"))
}

func badRequest(w http.ResponseWriter, fe *FieldError) {
	p := problem.New(http.StatusBadRequest, "invalid_request", fe.Error())
	if fe.Field != "" {
		p.Extra = map[string]any{"field": fe.Field}
	}
	problem.Write(w, p)
}

func notFound(w http.ResponseWriter) {
	problem.Write(w, problem.New(http.StatusNotFound, "not_found", "no such server"))
}

func accountClosing(w http.ResponseWriter) {
	problem.Write(w, problem.New(http.StatusConflict, "account_closing", "this account is scheduled for deletion; no new collector keys are issued"))
}

const listQuery = `SELECT id, name, hostname, machine_id, tags, created_at
FROM servers WHERE customer_id = $1 ORDER BY created_at DESC, id`

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok {
		return
	}
	rows, err := h.db.Query(r.Context(), listQuery, id.CustomerID)
	if err != nil {
		h.fail(w, err)
		return
	}
	servers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Server, error) {
		var s Server
		err := row.Scan(&s.ID, &s.Name, &s.Hostname, &s.MachineID, &s.Tags, &s.CreatedAt)
		if s.Tags == nil {
			s.Tags = []string{}
		}
		return s, err
	})
	if err != nil {
		h.fail(w, err)
		return
	}
	if servers == nil {
		servers = []Server{}
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "server", Action: "list", Metadata: map[string]any{"count": len(servers)}})
	reply.JSON(w, http.StatusOK, map[string]any{"items": servers})
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok || !h.stepUp(w, r, id) {
		return
	}
	// 415 for another media type, 413 past maxBody, 400 for a body that
	// does not read to its end.
	body, ok := reqbody.Read(w, r, maxBody)
	if !ok {
		return
	}
	req, fe := ParseEnrollment(body)
	if fe == nil {
		var key string
		if key, fe = IdempotencyKey(r.Header.Get("Idempotency-Key")); fe == nil {
			h.enroll(w, r, id, req, key)
			return
		}
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "server", Action: "create", Metadata: map[string]any{"invalid_field": fe.Field}})
	badRequest(w, fe)
}

func (h *handler) enroll(w http.ResponseWriter, r *http.Request, id identity.Identity, req Enrollment, idemKey string) {
	res, err := h.st.Enroll(r.Context(), id, req, idemKey)
	switch {
	case errors.Is(err, account.ErrClosing):
		accountClosing(w)
		return
	case errors.Is(err, stepup.ErrSessionEnded):
		problem.Write(w, stepup.Ended())
		return
	case errors.Is(err, errServerLimit):
		problem.Write(w, problem.New(http.StatusConflict, "limit_reached",
			fmt.Sprintf("this account has reached its limit of %d servers; delete one first", h.st.maxServers)))
		return
	case errors.Is(err, errIdempotencyReused):
		audit.Annotate(w, audit.Annotation{ResourceType: "server", Action: "create", Metadata: map[string]any{"idempotency_key_reused": true}})
		problem.Write(w, problem.New(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"this Idempotency-Key was used with a different request body; use a new key"))
		return
	case err != nil:
		h.fail(w, err)
		return
	}
	action, status := "create", http.StatusCreated
	if res.Reenrolled {
		action, status = "update", http.StatusOK
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "server", ResourceID: res.ServerID, Action: action, Metadata: map[string]any{
		"reenrolled":        res.Reenrolled,
		"collector_key_id":  res.KeyID,
		"revoked_key_count": res.Revoked,
		"idempotent_replay": res.Replayed,
		"hostname":          req.Hostname,
	}})
	var out enrollResponse
	out.Server.ID, out.Server.Name, out.Server.CollectorKey = res.ServerID, res.Name, res.Key
	out.IngestURL, out.Reenrolled = h.ingestURL, res.Reenrolled
	reply.JSON(w, status, out)
}

// deleteQuery removes a server of the customer; its collector keys and
// idempotency records go by cascade (and the edge drops the keys from its
// cache on the delete trigger's notification).
// deleteQuery deletes the server (its keys go by cascade) and records it
// in deleted_servers, so that account-purge deletes its ClickHouse rows.
const deleteQuery = `WITH k AS (SELECT count(*) AS n FROM api_keys WHERE server_id = $1 AND customer_id = $2),
	d AS (DELETE FROM servers WHERE id = $1 AND customer_id = $2 RETURNING id, customer_id, name),
	t AS (INSERT INTO deleted_servers (server_id, customer_id) SELECT id, customer_id FROM d)
SELECT d.name, k.n FROM d, k`

func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	id, ok := caller(w, r)
	if !ok || !needScope(w, id, "admin") {
		return
	}
	serverID := strings.ToLower(r.PathValue("id"))
	audit.Annotate(w, audit.Annotation{ResourceType: "server", ResourceID: serverID, Action: "delete"})
	if !identity.ValidID(serverID) {
		notFound(w)
		return
	}
	var name string
	var keys int64
	// In a transaction retried on a deadlock: an enrolment replaying an
	// Idempotency-Key locks its record and then the server, while this
	// locks the server and then (by cascade) the record.
	err := h.st.inTx(r.Context(), func(tx pgx.Tx) error {
		return tx.QueryRow(r.Context(), deleteQuery, serverID, id.CustomerID).Scan(&name, &keys)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		notFound(w)
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "server", ResourceID: serverID, Action: "delete",
		Metadata: map[string]any{"name": name, "deleted_key_count": keys}})
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) rotate(w http.ResponseWriter, r *http.Request) {
	serverID := strings.ToLower(r.PathValue("id"))
	// Before the checks: a refused rotation is audited as one too (with
	// the server's id when the path holds one).
	a := audit.Annotation{ResourceType: "api_key", Action: "rotate"}
	if identity.ValidID(serverID) {
		a.Metadata = map[string]any{"server_id": serverID}
	}
	audit.Annotate(w, a)
	id, ok := caller(w, r)
	if !ok || !needScope(w, id, "admin") || !h.stepUp(w, r, id) {
		return
	}
	if !identity.ValidID(serverID) {
		notFound(w)
		return
	}
	res, err := h.st.Rotate(r.Context(), id, serverID)
	switch {
	case errors.Is(err, errNoServer):
		notFound(w)
		return
	case errors.Is(err, account.ErrClosing):
		accountClosing(w)
		return
	case errors.Is(err, stepup.ErrSessionEnded):
		problem.Write(w, stepup.Ended())
		return
	case err != nil:
		h.fail(w, err)
		return
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "api_key", ResourceID: res.KeyID, Action: "rotate",
		Metadata: map[string]any{"server_id": serverID, "rotated_from": res.RotatedFrom, "revoked_key_count": res.Revoked}})
	reply.JSON(w, http.StatusCreated, map[string]string{"collector_key": res.Key})
}
