package db

import (
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/glassmkr/guardian/shared/config"
)

// ClickHouseOptions bound a ClickHouse connection pool.
type ClickHouseOptions struct {
	// Dial and Read bound connecting and each answer (defaults 5 s, 1 min).
	Dial, Read time.Duration
	// MaxConns bounds open connections (default 2).
	MaxConns int
	// Database overrides cfg.Database (e.g. "default" before migrating).
	Database string
}

// ClickHouse returns a pool for cfg over the native protocol. Like Open it
// connects lazily, and its errors name the server, never the password.
func ClickHouse(cfg config.ClickHouse, o ClickHouseOptions) (driver.Conn, error) {
	if o.Dial <= 0 {
		o.Dial = 5 * time.Second
	}
	if o.Read <= 0 {
		o.Read = time.Minute
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 2
	}
	database := cfg.Database
	if o.Database != "" {
		database = o.Database
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{cfg.Addr},
		Auth:         clickhouse.Auth{Database: database, Username: cfg.User, Password: cfg.Password},
		DialTimeout:  o.Dial,
		ReadTimeout:  o.Read,
		MaxOpenConns: o.MaxConns,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse at %s: %w", cfg.Addr, err)
	}
	return conn, nil
}
