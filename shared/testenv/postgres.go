package testenv

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/migrate"
)

// PG is a migrated PostgreSQL database that belongs to one test.
type PG struct {
	// Database is the database's name.
	Database string
	// OwnerDSN connects as the owner role that ran the migrations.
	OwnerDSN string
	// AppDSN connects as the runtime role.
	AppDSN string
	// FunctionDSNs are GUARDIAN_PG_DSN_<NAME>: each function's own role.
	FunctionDSNs map[string]string
	// Owner is a pool connected as the owner role.
	Owner *pgxpool.Pool
}

// Postgres creates a fresh database for t, applies the migrations as the
// owner role and drops the database when t ends.
func Postgres(t testing.TB) *PG {
	t.Helper()
	pg := PostgresEmpty(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := migrate.Postgres(ctx, pg.Owner, migrate.PostgresOptions{}); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return pg
}

// PrivatePostgres starts a PostgreSQL server of t's own (one a test may
// stop, or whose files it may read), migrated: it returns the server's
// environment (see Private), its directory and a pool as the owner role.
func PrivatePostgres(t testing.TB) (env map[string]string, dir string, owner *pgxpool.Pool) {
	t.Helper()
	env, dir = Private(t, "postgres")
	owner, err := pgxpool.New(context.Background(), env["GUARDIAN_PG_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := migrate.Postgres(ctx, owner, migrate.PostgresOptions{}); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return env, dir, owner
}

// PostgresEmpty creates a fresh database for t without applying any
// migration, and drops it when t ends.
func PostgresEmpty(t testing.TB) *PG {
	t.Helper()
	env := Servers(t, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	admin, err := pgxpool.New(ctx, env["GUARDIAN_PG_DSN"])
	if err != nil {
		t.Fatalf("testenv: connect postgres: %v", err)
	}
	defer admin.Close()
	name := Name("t_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database: %v", err)
	}
	pg := &PG{
		Database:     name,
		OwnerDSN:     withDatabase(t, env["GUARDIAN_PG_DSN"], name),
		AppDSN:       withDatabase(t, env["GUARDIAN_PG_APP_DSN"], name),
		FunctionDSNs: FunctionDSNs(t, env, withDatabase(t, env["GUARDIAN_PG_APP_DSN"], name)),
	}
	t.Cleanup(func() {
		if pg.Owner != nil {
			pg.Owner.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgxpool.New(ctx, env["GUARDIAN_PG_DSN"])
		if err != nil {
			t.Errorf("testenv: drop database: %v", err)
			return
		}
		defer admin.Close()
		// Without FORCE: the owner may not terminate the runtime role's
		// sessions, which end on their own moments after their pool closes.
		for {
			_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name)
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Errorf("testenv: drop database: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	pg.Owner, err = pgxpool.New(ctx, pg.OwnerDSN)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", name, err)
	}
	return pg
}

// App returns a pool connected as the runtime role, closed when t ends.
func (p *PG) App(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), p.AppDSN)
	if err != nil {
		t.Fatalf("testenv: connect as runtime role: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func withDatabase(t testing.TB, dsn, db string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("testenv: bad DSN in servers.env: %v", err)
	}
	u.Path = "/" + db
	return u.String()
}

// FunctionDSNs returns GUARDIAN_PG_DSN_<NAME> for every function role,
// each with its role's credentials from servers (a servers.env) and the
// host, port and database of target (a DSN on that server, or a proxy in
// front of it).
func FunctionDSNs(t testing.TB, servers map[string]string, target string) map[string]string {
	t.Helper()
	to, err := url.Parse(target)
	if err != nil {
		t.Fatalf("testenv: bad DSN: %v", err)
	}
	out := map[string]string{}
	for _, fn := range migrate.FunctionRoles {
		k := "GUARDIAN_PG_DSN_" + strings.ToUpper(fn)
		u, err := url.Parse(servers[k])
		if err != nil || servers[k] == "" {
			t.Fatalf("testenv: servers.env has no %s (servers started by an older servers.sh: destroy and start them again)", k)
		}
		u.Host, u.Path, u.RawQuery = to.Host, to.Path, to.RawQuery
		out[k] = u.String()
	}
	return out
}
