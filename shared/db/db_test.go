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
