// Package db opens the database connections a function or job uses: a
// PostgreSQL pool (Open) or single connection (Connect) and a ClickHouse
// pool (ClickHouse). Connections
// are made lazily, so a function starts (and answers 503 for what needs the
// database) while PostgreSQL is down, and the DSN, which holds a password,
// never appears in an error.
package db

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/pgdsn"
)

// Open returns a pool of at most maxConns connections for dsn; name is the
// variable the DSN came from, for the error message.
func Open(ctx context.Context, name, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgdsn.Pool(name, dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return pool, nil
}

// Connect opens one PostgreSQL connection to dsn; name is the variable the
// DSN came from. pgx's parse errors quote the string they could not parse,
// password and all, so shared/pgdsn replaces them, and refuses a URL whose
// password it would read as the database; pgx's connect errors name only
// the host, user and database.
func Connect(ctx context.Context, name, dsn string) (*pgx.Conn, error) {
	cfg, err := pgdsn.Conn(name, dsn)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return conn, nil
}
