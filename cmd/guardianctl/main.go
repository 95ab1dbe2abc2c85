// Command guardianctl runs operator tasks against Guardian's databases:
// applying migrations and creating the demo customer for `make up`.
//
//	guardianctl migrate       apply PostgreSQL and ClickHouse migrations
//	guardianctl demo-account  create (or reset) the demo customer and admin
//	guardianctl version       print the Guardian release this binary is (also --version)
//
// Settings come from the environment (GUARDIAN_PG_DSN as the owner role,
// GUARDIAN_CLICKHOUSE_*, GUARDIAN_DEMO_EMAIL, GUARDIAN_DEMO_PASSWORD).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/bcrypt"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/pgdsn"
	"github.com/glassmkr/guardian/shared/version"
)

func main() {
	version.ExitIfAsked()
	if len(os.Args) == 2 && os.Args[1] == "version" {
		version.Print(os.Stdout)
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: guardianctl migrate|demo-account|version")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "migrate":
		err = runMigrate(ctx)
	case "demo-account":
		err = runDemo(ctx)
	default:
		fmt.Fprintf(os.Stderr, "guardianctl: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "guardianctl %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func ownerPool(ctx context.Context, env *config.Loader) (*pgxpool.Pool, error) {
	dsn := env.String(config.PGDSN)
	if err := env.Err(); err != nil {
		return nil, err
	}
	cfg, err := pgdsn.Pool(config.PGDSN, dsn)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.PGDSN, err)
	}
	return pool, nil
}

func runMigrate(ctx context.Context) error {
	env := config.New(os.LookupEnv)
	pool, err := ownerPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrate.Postgres(ctx, pool, migrate.PostgresOptions{AppRole: env.Optional("GUARDIAN_PG_APP_ROLE", migrate.DefaultAppRole),
		Log: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }})
	if err != nil {
		return err
	}
	fmt.Printf("postgres: %d migration(s) applied %v\n", len(applied), applied)

	ch := env.LoadClickHouse()
	if err := env.Err(); err != nil {
		return err
	}
	conn, err := db.ClickHouse(ch, db.ClickHouseOptions{Database: "default"})
	if err != nil {
		return err
	}
	defer conn.Close()
	applied, err = migrate.ClickHouse(ctx, conn, ch.Database)
	if err != nil {
		return err
	}
	fmt.Printf("clickhouse: %d migration(s) applied %v\n", len(applied), applied)
	return nil
}

// runDemo creates the demo customer and its admin user, or resets the
// user's password to GUARDIAN_DEMO_PASSWORD if they exist.
func runDemo(ctx context.Context) error {
	env := config.New(os.LookupEnv)
	email := env.String("GUARDIAN_DEMO_EMAIL")
	password := env.Secret("GUARDIAN_DEMO_PASSWORD", 12)
	pool, err := ownerPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	if len(password) > 72 {
		return fmt.Errorf("GUARDIAN_DEMO_PASSWORD is longer than bcrypt's 72 bytes")
	}
	hash, err := bcrypt.GenerateFromPassword(password, 12)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var userID string
	err = tx.QueryRow(ctx, "UPDATE users SET password_hash = $2, updated_at = now() WHERE email = $1 RETURNING id", email, string(hash)).Scan(&userID)
	switch {
	case err == nil:
		fmt.Printf("demo account %s exists; password reset\n", email)
		return tx.Commit(ctx)
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("look up demo user: %w", err)
	}
	var customerID string
	if err := tx.QueryRow(ctx, "INSERT INTO customers (name, plan) VALUES ('Demo', 'pro') RETURNING id").Scan(&customerID); err != nil {
		return fmt.Errorf("create demo customer: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO users (customer_id, email, password_hash, role) VALUES ($1, $2, $3, 'admin')", customerID, email, string(hash)); err != nil {
		return fmt.Errorf("create demo user: %w", err)
	}
	fmt.Printf("demo account %s created\n", email)
	return tx.Commit(ctx)
}
