package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/password"
	"github.com/glassmkr/guardian/shared/session"
)

// Customer is a customer with an admin user and two servers, written as
// the owner role into a test's database, for tests of authenticated
// routes. Keys are hashed with Pepper and sessions signed with Secret.
type Customer struct {
	DB                      *pgxpool.Pool
	Pepper, Secret          []byte
	ID, UserID              string
	ServerID, OtherServerID string
}

// NewCustomer creates a customer in db.
func NewCustomer(t testing.TB, db *pgxpool.Pool, pepper, secret []byte) *Customer {
	t.Helper()
	c := &Customer{DB: db, Pepper: pepper, Secret: secret}
	ctx := context.Background()
	err := db.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('Acme') RETURNING id").Scan(&c.ID)
	if err == nil {
		err = db.QueryRow(ctx, "INSERT INTO users (customer_id, email, role) VALUES ($1, $2, 'admin') RETURNING id", c.ID, Name("u")+"@example.com").Scan(&c.UserID)
	}
	if err == nil {
		err = db.QueryRow(ctx, "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, 'db1', 'db1') RETURNING id", c.ID).Scan(&c.ServerID)
	}
	if err == nil {
		err = db.QueryRow(ctx, "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, 'db2', 'db2') RETURNING id", c.ID).Scan(&c.OtherServerID)
	}
	if err != nil {
		t.Fatalf("testenv: customer: %v", err)
	}
	return c
}

// AccountKey mints and stores an account key with scope and returns it.
func (c *Customer) AccountKey(t testing.TB, scope string) string {
	t.Helper()
	return c.key(t, apikey.Account, scope, nil)
}

// CollectorKey mints and stores a collector key bound to server.
func (c *Customer) CollectorKey(t testing.TB, server string) string {
	t.Helper()
	return c.key(t, apikey.Collector, nil, server)
}

func (c *Customer) key(t testing.TB, kind apikey.Kind, scope, server any) string {
	t.Helper()
	key, err := apikey.Generate(kind)
	if err != nil {
		t.Fatal(err)
	}
	h := apikey.Hash(c.Pepper, key)
	_, err = c.DB.Exec(context.Background(), `INSERT INTO api_keys (customer_id, kind, scope, server_id, name, key_hash, last4) VALUES ($1, $2, $3, $4, 'test', $5, $6)`,
		c.ID, kind.String(), scope, server, h[:], key[len(key)-4:])
	if err != nil {
		t.Fatalf("testenv: key: %v", err)
	}
	return key
}

// Revoke revokes a stored key.
func (c *Customer) Revoke(t testing.TB, key string) {
	t.Helper()
	h := apikey.Hash(c.Pepper, key)
	if _, err := c.DB.Exec(context.Background(), "UPDATE api_keys SET revoked_at = now(), revoked_reason = 'test' WHERE key_hash = $1", h[:]); err != nil {
		t.Fatal(err)
	}
}

// Session stores a session for the admin user and returns its id and
// signed token.
func (c *Customer) Session(t testing.TB) (id, token string) {
	t.Helper()
	now := time.Now()
	if err := c.DB.QueryRow(context.Background(), "INSERT INTO sessions (user_id, customer_id, expires_at) VALUES ($1, $2, $3) RETURNING id",
		c.UserID, c.ID, now.Add(session.Lifetime)).Scan(&id); err != nil {
		t.Fatalf("testenv: session: %v", err)
	}
	token, err := session.Issue(c.Secret, id, c.UserID, c.ID, now, now.Add(session.Lifetime))
	if err != nil {
		t.Fatal(err)
	}
	return id, token
}

// EdgeEnv prepares a stack on a database of the test's own: it returns the
// stack environment (see StackEnv) pointing at that database, and a
// customer whose keys and sessions that stack will accept.
func EdgeEnv(t testing.TB) (map[string]string, *Customer, *PG) {
	t.Helper()
	env, pg := stackEnv(t)
	c := NewCustomer(t, pg.Owner, []byte(env["GUARDIAN_KEY_PEPPER"]), []byte(env["GUARDIAN_SESSION_SECRET"]))
	return env, c, pg
}

// Password gives the customer's admin user a password (bcrypt, as the
// product stores it) and returns the user's e-mail address.
func (c *Customer) Password(t testing.TB, pw string) string {
	t.Helper()
	hash, err := password.Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	var email string
	if err := c.DB.QueryRow(context.Background(), "UPDATE users SET password_hash = $2 WHERE id = $1 RETURNING email", c.UserID, hash).Scan(&email); err != nil {
		t.Fatalf("testenv: password: %v", err)
	}
	return email
}

// Corrupt returns key with its last character changed (never to itself),
// so its checksum no longer holds.
func Corrupt(key string) string {
	if key == "" {
		return "x"
	}
	last := key[len(key)-1]
	repl := byte('x')
	if last == 'x' {
		repl = 'y'
	}
	return key[:len(key)-1] + string(repl)
}
