package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// server is a private PostgreSQL, migrated, whose data files the test
// reads.
type server struct {
	env     map[string]string
	dataDir string
	owner   *pgxpool.Pool
}

func newServer(t *testing.T) *server {
	t.Helper()
	env, dir, owner := testenv.PrivatePostgres(t)
	data, err := filepath.EvalSymlinks(filepath.Join(dir, "postgres", "data"))
	if err != nil {
		t.Fatal(err)
	}
	return &server{env: env, dataDir: data, owner: owner}
}

// inFiles reports whether canary is in the files of relation rel, once
// everything is written out.
func (s *server) inFiles(t *testing.T, rel, canary string) bool {
	t.Helper()
	ctx := context.Background()
	su, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=guardian sslmode=disable", s.env["GUARDIAN_PG_SOCKET_DIR"], s.env["PG_PORT"]))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	if _, err := su.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	var path string
	if err := s.owner.QueryRow(ctx, "SELECT pg_relation_filepath($1)", rel).Scan(&path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.dataDir, path))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte(canary))
}

// A purged account's name and e-mail stay in the table and index files
// after the delete (and a plain VACUUM); after the job they are gone, and
// the accounts that remain are intact.
func TestDeletedRowsLeaveTheDataFiles(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	name, email := "Canary-Deleted-Corp-"+testenv.Name(""), "canary-"+testenv.Name("")+"@deleted.example"
	// The account that stays first: a page fills from its end, and a
	// tuple written after the deleted one would be moved over its bytes
	// when VACUUM defragments the page.
	var gone, kept string
	if err := s.owner.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('Still Here') RETURNING id").Scan(&kept); err != nil {
		t.Fatal(err)
	}
	if _, err := s.owner.Exec(ctx, "INSERT INTO users (customer_id, email) VALUES ($1, 'still-here@example.com')", kept); err != nil {
		t.Fatal(err)
	}
	if err := s.owner.QueryRow(ctx, "INSERT INTO customers (name) VALUES ($1) RETURNING id", name).Scan(&gone); err != nil {
		t.Fatal(err)
	}
	if _, err := s.owner.Exec(ctx, "INSERT INTO users (customer_id, email) VALUES ($1, $2)", gone, email); err != nil {
		t.Fatal(err)
	}
	if _, err := s.owner.Exec(ctx, "DELETE FROM customers WHERE id = $1", gone); err != nil {
		t.Fatal(err)
	}
	if _, err := s.owner.Exec(ctx, "VACUUM customers, users"); err != nil {
		t.Fatal(err)
	}
	if !s.inFiles(t, "customers", name) || !s.inFiles(t, "users", email) || !s.inFiles(t, "users_email_key", email) {
		t.Fatalf("the deleted rows are not in the files to begin with (customers %t, users %t, users_email_key %t): the test would prove nothing",
			s.inFiles(t, "customers", name), s.inFiles(t, "users", email), s.inFiles(t, "users_email_key", email))
	}

	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) {
		switch k {
		case "GUARDIAN_PG_DSN":
			return s.env["GUARDIAN_PG_DSN"], true
		case job.EnvLockDir:
			return t.TempDir(), true
		}
		return "", false
	}
	res := job.Execute(ctx, spec(), lookup, &out, &errOut)
	if res.Status != job.StatusOK {
		t.Fatalf("%s: %s\n%s", res.Status, out.String(), errOut.String())
	}
	var line struct {
		Tables []TableResult `json:"tables"`
	}
	if err := json.Unmarshal(out.Bytes(), &line); err != nil || len(line.Tables) != len(Tables) {
		t.Fatalf("result line %s: %v", out.String(), err)
	}
	for _, tr := range line.Tables {
		if tr.Status != "compacted" {
			t.Errorf("%s: %s", tr.Table, tr.Status)
		}
	}
	if s.inFiles(t, "customers", name) || s.inFiles(t, "users", email) || s.inFiles(t, "users_email_key", email) {
		t.Error("the deleted rows are still in the files after the job")
	}
	var n int
	if err := s.owner.QueryRow(ctx, "SELECT count(*) FROM customers WHERE id = $1 AND name = 'Still Here'", kept).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the remaining customer: %d %v", n, err)
	}
}

// A table held by a long transaction is tried again, then left for the
// next run: the run is red naming it, and every other table is compacted.
func TestALockedTableIsRetriedThenReported(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	holder, err := s.owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, "LOCK TABLE mfa_attempts IN ACCESS SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, s.env["GUARDIAN_PG_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := compact(ctx, conn, []string{"customers", "mfa_attempts", "no_such_table"}, 10*time.Millisecond)
	if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "mfa_attempts") || strings.Contains(err.Error(), "customers") {
		t.Fatalf("err = %v", err)
	}
	want := map[string]string{"customers": "compacted", "mfa_attempts": "locked", "no_such_table": "absent"}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(res), len(want), res)
	}
	for _, tr := range res {
		tries := 1
		if tr.Table == "mfa_attempts" {
			tries = attempts
		}
		if tr.Status != want[tr.Table] || tr.Attempts != tries {
			t.Errorf("%s: %s after %d attempts, want %s after %d", tr.Table, tr.Status, tr.Attempts, want[tr.Table], tries)
		}
	}
}

// A role that is not the tables' owner gets a warning and success from
// VACUUM, and nothing is rewritten: the run fails, naming the setting.
func TestARoleThatIsNotTheOwnerFails(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.env["GUARDIAN_PG_APP_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = compact(ctx, conn, []string{"customers"}, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not rewritten") || !strings.Contains(err.Error(), "GUARDIAN_PG_DSN") {
		t.Fatalf("compact as the runtime role: %v", err)
	}
}
