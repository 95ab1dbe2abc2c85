package main

import (
	"context"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestMigrateThenDemoAccountCreatesAndResets(t *testing.T) {
	pg := testenv.PostgresEmpty(t)
	ch := testenv.ClickHouse(t) // a migrated database proves the server; migrate a fresh one below
	chDB := testenv.Name("t_")
	t.Cleanup(func() { _ = ch.Conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+chDB) })
	t.Setenv("GUARDIAN_PG_DSN", pg.OwnerDSN)
	t.Setenv("GUARDIAN_CLICKHOUSE_ADDR", ch.Addr)
	t.Setenv("GUARDIAN_CLICKHOUSE_USER", ch.User)
	t.Setenv("GUARDIAN_CLICKHOUSE_PASSWORD", ch.Password)
	t.Setenv("GUARDIAN_CLICKHOUSE_DATABASE", chDB)
	ctx := context.Background()
	for range 2 { // the second run finds nothing to do
		if err := runMigrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var tables uint64
	if err := ch.Conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ?", chDB).Scan(&tables); err != nil || tables < 4 {
		t.Fatalf("clickhouse tables: %d, %v", tables, err)
	}

	t.Setenv("GUARDIAN_DEMO_EMAIL", "demo@example.com")
	for _, password := range []string{"first-demo-password", "second-demo-password"} {
		t.Setenv("GUARDIAN_DEMO_PASSWORD", password)
		if err := runDemo(ctx); err != nil {
			t.Fatal(err)
		}
		var hash string
		var customers int
		if err := pg.Owner.QueryRow(ctx, "SELECT u.password_hash, (SELECT count(*) FROM customers) FROM users u WHERE email = 'demo@example.com'").Scan(&hash, &customers); err != nil {
			t.Fatal(err)
		}
		if bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil || customers != 1 {
			t.Fatalf("after demo-account with %q: hash mismatch or %d customers", password, customers)
		}
	}
}

func TestCommandsNameMissingSettings(t *testing.T) {
	t.Setenv("GUARDIAN_PG_DSN", "")
	t.Setenv("GUARDIAN_DEMO_EMAIL", "")
	t.Setenv("GUARDIAN_DEMO_PASSWORD", "short")
	err := runDemo(context.Background())
	for _, want := range []string{"GUARDIAN_PG_DSN is required", "GUARDIAN_DEMO_EMAIL is required", "GUARDIAN_DEMO_PASSWORD is too short"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "short\n") {
		t.Error("error prints the password")
	}
}
