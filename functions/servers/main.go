// Command servers serves the customer's servers and their collector keys:
//
//	GET    /api/v1/servers                      list
//	POST   /api/v1/servers                      {hostname, machine_id?, name?, tags?} + optional
//	                                            Idempotency-Key: 201 {server:{id,name,collector_key},
//	                                            ingest_url, reenrolled:false}; the same machine_id
//	                                            again: 200, same server, fresh key, reenrolled:true
//	DELETE /api/v1/servers/{id}                 204, hard delete (its collector keys go with it)
//	POST   /api/v1/servers/{id}/rotate-key      201 {collector_key}; the old key stops at once
//
// Enrollment is what deployed collector agents' `enroll` command calls
// (docs/collector-protocol.md): they send an account key, Idempotency-Key
// "enroll-<machine_id>" and read server.collector_key, server.id,
// ingest_url and reenrolled from a 200 or 201.
//
// A collector key is shown once, in the answer that minted it; only its
// HMAC is stored. Minting a key again (re-enrollment, rotation) revokes
// the server's earlier collector keys in the same transaction. Sessions
// enroll and rotate only after confirming their password in the last five
// minutes (401 reauth_required); account keys are judged by their scope
// at the edge (write to enroll, admin to delete or rotate).
//
// Grants: the runtime PostgreSQL role, the key pepper (it hashes the keys
// it mints) and GUARDIAN_URL (the public base of ingest_url).
package main

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/plan"
)

// PublicURL names the variable holding Guardian's public base URL.
const PublicURL = "GUARDIAN_URL"

// DefaultPublicURL is the base URL of `make up`.
const DefaultPublicURL = "http://localhost:8080"

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	pepper := env.Secret(config.KeyPepper, config.MinSecretLen)
	base := env.Optional(PublicURL, DefaultPublicURL)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	ingest, err := IngestURL(base)
	if err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 8)
	if err != nil {
		return nil, nil, err
	}
	h := &handler{db: pool, st: &store{db: pool, hasher: apikey.NewHasher(pepper), maxServers: plan.MaxServers}, ingestURL: ingest, log: log, now: time.Now}
	return h.routes(), pool.Close, nil
}

// IngestURL is where collectors send snapshots, given the public base URL
// (an absolute http or https URL, perhaps with a path prefix).
func IngestURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New(PublicURL + " must be an absolute http or https URL such as https://guardian.example.com")
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/") + "/api/v1/ingest", nil
}
