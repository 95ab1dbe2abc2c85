package main

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/mfa"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	mcfg := mfa.ConfigFromEnv(env)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	second, err := mfa.New(pool, mcfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	if off := second.WebAuthnOff(); off != nil {
		log.Warn("WebAuthn is off; security keys cannot be added", zap.String("why", off.Error()))
	}
	h := &handler{db: pool, mfa: second, log: log, now: time.Now}
	return h.routes(), pool.Close, nil
}
