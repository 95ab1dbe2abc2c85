// Command whoami serves GET /api/v1/whoami: the caller's identity as the
// edge established it (credential kind, customer, user or key, scope), so
// an API client can check which key it holds and what that key may do.
//
// Grants: none. It reads only the identity headers the runtime sets.
package main

import (
	"context"
	"encoding/json"
	"net/http"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
)

func main() { fnserve.Main(setup) }

func setup(context.Context, *zap.Logger, *config.Loader) (http.Handler, func(), error) {
	return problem.NoQuery(http.HandlerFunc(serve)), nil, nil
}

// response is the JSON body; empty fields are left out.
type response struct {
	Kind       string `json:"kind"`
	CustomerID string `json:"customer_id"`
	UserID     string `json:"user_id,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	ServerID   string `json:"server_id,omitempty"`
	Scope      string `json:"scope,omitempty"`
}

func serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "use GET or HEAD"))
		return
	}
	id, ok := identity.FromRequest(r)
	if !ok {
		// The route is behind guardian_auth; reaching here anonymous is a
		// configuration error, not the client's.
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no identity"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(response{
		Kind: id.Kind, CustomerID: id.CustomerID, UserID: id.UserID, SessionID: id.SessionID,
		KeyID: id.KeyID, ServerID: id.ServerID, Scope: id.Scope,
	})
}
