package pgdsn

import (
	"strings"
	"testing"
)

// A connection string is never quoted in an error: not one that fails to
// parse, nor one whose unencoded '/' in the password made pgx read the
// rest of the password as the database's name.
func TestErrorsHoldNoPassword(t *testing.T) {
	for _, dsn := range []string{
		"postgres://guardian_owner:/Xk9+S3cretTail@127.0.0.1:5432/guardian",
		"postgres://guardian_owner:42/Xk9+S3cretTail@127.0.0.1:5432/guardian",
		"postgresql://u:ab/S3cretTail@h/db",
		"host=127.0.0.1 user=guardian_owner password = S3cretTail port=5432x dbname=guardian",
		"postgres://guardian_owner:Sup3r@S3cretTail@127.0.0.1:5432x/guardian",
	} {
		_, err1 := Conn("GUARDIAN_PG_DSN", dsn)
		_, err2 := Pool("GUARDIAN_PG_DSN", dsn)
		for _, err := range []error{err1, err2} {
			if err == nil || strings.Contains(err.Error(), "S3cret") || !strings.HasPrefix(err.Error(), "GUARDIAN_PG_DSN ") {
				t.Errorf("%q: %v", dsn, err)
			}
		}
	}
	for _, dsn := range []string{
		"postgres://guardian_owner:Xk9%2BS3cret%2FTail@127.0.0.1:5432/guardian",
		"host=/run/postgresql user=guardian password='a/b@c' dbname=guardian",
		"postgres://u:p@h/db?sslmode=disable",
	} {
		if _, err := Pool("GUARDIAN_PG_DSN", dsn); err != nil {
			t.Errorf("%q refused: %v", dsn, err)
		}
		if _, err := Conn("GUARDIAN_PG_DSN", dsn); err != nil {
			t.Errorf("%q refused: %v", dsn, err)
		}
	}
}
