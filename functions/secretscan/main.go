// Command secretscan is GitHub's secret-scanning partner endpoint:
//
//	POST /github/secret-scanning
//
// GitHub posts a JSON array of {token, type, url, source} for strings
// matching our key pattern that it found in public code, signed with
// ECDSA P-256 (headers Github-Public-Key-Identifier and
// Github-Public-Key-Signature, the signature over the raw body). The
// function checks the signature against GitHub's published keys, then
// for each token: checks its format and checksum without I/O, looks the
// well-formed ones up by HMAC in one query, revokes the matches in one
// transaction with one audit row each and the notices to each affected
// customer (e-mail to its admins, and the operator's security webhooks),
// which it then delivers in the background (outbox.go), and answers
// GitHub a label per token: true_positive for a key of ours (revoked now
// or before), false_positive otherwise.
//
// The route is public (GitHub has no credential of ours); the per-IP
// bucket applies at the edge. Answers: 200 labels; 400 missing headers or
// a payload that is not an array of token objects; 401 unknown key
// identifier or bad signature (nothing revoked); 413 over 5 MiB; 503 when
// GitHub's keys or the database cannot be reached.
//
// Grants: its own PostgreSQL role (revoke_reported_keys, which revokes
// and audits as the owner; SELECT users; the revocation_notices outbox)
// and the key pepper (it hashes the reported tokens). Settings: GUARDIAN_GITHUB_KEYS_URL (default GitHub's),
// GUARDIAN_SMTP_ADDR, GUARDIAN_SMTP_FROM, GUARDIAN_SMTP_USER,
// GUARDIAN_SMTP_PASSWORD, GUARDIAN_SECURITY_WEBHOOKS (comma-separated
// URLs told of every revocation; there is no per-customer webhook setting
// yet) and GUARDIAN_WEBHOOK_ALLOW (internal webhook targets the operator
// permits). See deploy/github-secret-scanning.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/notify"
)

// Settings of this function.
const (
	EnvKeysURL  = "GUARDIAN_GITHUB_KEYS_URL"
	EnvWebhooks = "GUARDIAN_SECURITY_WEBHOOKS"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	pepper := env.Secret(config.KeyPepper, config.MinSecretLen)
	keysURL := env.Optional(EnvKeysURL, DefaultKeysURL)
	hooks := env.Optional(EnvWebhooks, "")
	ncfg := notify.LoadConfig(env)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	if u, err := url.Parse(keysURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, nil, errors.New(EnvKeysURL + " must be an http(s) URL")
	}
	webhooks, err := notify.WebhookURLs(EnvWebhooks, hooks)
	if err != nil {
		return nil, nil, err
	}
	var mailer *notify.Mailer
	if ncfg.SMTP.Addr != "" {
		if mailer, err = notify.NewMailer(ncfg.SMTP); err != nil {
			return nil, nil, err
		}
	} else {
		log.Warn("secret scanning: " + notify.EnvSMTPAddr + " is not set; customers' e-mails about revoked keys wait in revocation_notices until a process with a mail relay sends them")
	}
	guard, err := notify.NewGuard(ncfg.Allow, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", notify.EnvWebhookAllow, err)
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	ob := newOutbox(pool, mailer, notify.NewWebhooks(guard), webhooks, log)
	h := &handler{db: pool, hasher: apikey.NewHasher(pepper), keys: newKeySource(keysURL, log), outbox: ob, log: log, chain: newChain()}
	// The outbox delivers notices for as long as the function runs, those
	// an earlier process left included (the Caddyfile keeps one warm).
	octx, stop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ob.run(octx)
	}()
	closeFn := func() {
		// The runtime kills a function 10 s after asking it to stop. A
		// delivery cut short stays in the table, due at once, for the
		// next process.
		stop()
		<-stopped
		pool.Close()
	}
	return h.routes(), closeFn, nil
}
