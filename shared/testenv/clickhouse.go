package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/glassmkr/guardian/shared/migrate"
)

// CH is a migrated ClickHouse database that belongs to one test.
type CH struct {
	Addr, User, Password, Database string
	Conn                           driver.Conn
}

// ClickHouse creates a fresh database for t, applies the migrations and
// drops it when t ends.
func ClickHouse(t testing.TB) *CH {
	t.Helper()
	env := Servers(t, "clickhouse")
	ch := &CH{
		Addr:     env["GUARDIAN_CLICKHOUSE_ADDR"],
		User:     env["GUARDIAN_CLICKHOUSE_USER"],
		Password: env["GUARDIAN_CLICKHOUSE_PASSWORD"],
		Database: Name("t_"),
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{ch.Addr},
		Auth:        clickhouse.Auth{Database: "default", Username: ch.User, Password: ch.Password},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatalf("testenv: connect clickhouse: %v", err)
	}
	ch.Conn = conn
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ch.Database); err != nil {
			t.Errorf("testenv: drop clickhouse database: %v", err)
		}
		_ = conn.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := migrate.ClickHouse(ctx, conn, ch.Database); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return ch
}
