package db

import (
	"context"
	"strings"
	"testing"
)

func TestOpenHidesTheDSN(t *testing.T) {
	_, err := Open(context.Background(), "GUARDIAN_PG_APP_DSN", "postgres://u:s3cret-password@[::1/x", 2)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "GUARDIAN_PG_APP_DSN") {
		t.Fatalf("err = %v", err)
	}
	pool, err := Open(context.Background(), "X", "postgres://u:p@127.0.0.1:1/db", 3)
	if err != nil {
		t.Fatalf("a well-formed DSN must open lazily even with nothing listening: %v", err)
	}
	defer pool.Close()
	if pool.Config().MaxConns != 3 {
		t.Fatal("max connections not applied")
	}
}

// TestConnectHidesTheDSN gives Connect DSNs that pgx cannot parse, each
// with a password pgx's own error would quote (in whole, or the part after
// an unencoded @), and one it parses but cannot reach.
func TestConnectHidesTheDSN(t *testing.T) {
	for _, dsn := range []string{
		"host=127.0.0.1 user=guardian_owner password = Sup3rS3cret port=5432x dbname=guardian",
		"postgres://guardian_owner:Sup3r@S3cret@127.0.0.1:5432x/guardian",
		"postgres://u:Sup3rS3cret@[::1/x",
		"postgres://u:Sup3rS3cret@127.0.0.1:1/db?connect_timeout=2",
		// A '/' in the password, not percent-encoded: pgx reads the rest
		// of it as the database's name, which its connect errors print.
		"postgres://guardian_owner:/Xk9+Sup3rS3cret@127.0.0.1:1/guardian?connect_timeout=2",
		"postgres://guardian_owner:42/Xk9+Sup3rS3cret@127.0.0.1:1/guardian?connect_timeout=2",
	} {
		_, err := Connect(context.Background(), "GUARDIAN_PG_DSN", dsn)
		if err == nil || strings.Contains(err.Error(), "S3cret") || !strings.Contains(err.Error(), "GUARDIAN_PG_DSN") {
			t.Errorf("%q: err = %v", dsn, err)
		}
	}
}
