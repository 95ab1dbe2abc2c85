package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// edgeRows writes n audit rows through the real edge and waits until
// they are stored.
func edgeRows(t *testing.T, n int) (*testenv.PG, *testenv.Stack) {
	t.Helper()
	env, c, pg := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	key := c.AccountKey(t, "read")
	for range n {
		req, _ := newRequest(stack.URL+"/api/v1/whoami", key)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int
		_ = pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log").Scan(&got)
		if got == n {
			return pg, stack
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verifier runs the built job; extra are more environment variables.
func verifier(t *testing.T, pg *testenv.PG) func(extra ...string) (int, string) {
	bin := testenv.Build(t, "./functions/jobs/audit-verify")
	lockDir := t.TempDir()
	return func(extra ...string) (int, string) {
		cmd := exec.Command(bin)
		// As deployed: the audit reader's role, SELECT on api_audit_log only.
		cmd.Env = append([]string{"GUARDIAN_PG_APP_DSN=" + pg.FunctionDSNs["GUARDIAN_PG_DSN_AUDIT_VERIFY"], "GUARDIAN_JOB_LOCK_DIR=" + lockDir}, extra...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
}

// asOwner runs statements with the append-only trigger off, as the
// table's owner (or a superuser) can.
func asOwner(t *testing.T, pg *testenv.PG, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	all := append([]string{"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete"}, stmts...)
	all = append(all, "ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete")
	for _, stmt := range all {
		if _, err := pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifyCommandFailsAtAnEditedRow runs the built job against rows
// written by the real edge, then edits one row as the owner.
func TestVerifyCommandFailsAtAnEditedRow(t *testing.T) {
	pg, _ := edgeRows(t, 5)
	verify := verifier(t, pg)
	if code, out := verify(); code != 0 || !strings.Contains(out, `"ok":true`) || !strings.Contains(out, `"rows":5`) {
		t.Fatalf("clean log: exit %d\n%s", code, out)
	}
	var victim string
	if err := pg.Owner.QueryRow(context.Background(), "SELECT id::text FROM api_audit_log ORDER BY writer_seq OFFSET 2 LIMIT 1").Scan(&victim); err != nil {
		t.Fatal(err)
	}
	asOwner(t, pg, "UPDATE api_audit_log SET source_ip = '198.51.100.1' WHERE id = "+victim)
	code, out := verify()
	if code != 1 || !strings.Contains(out, "row id "+victim+" ") || !strings.Contains(out, "content") {
		t.Fatalf("edited log: exit %d\n%s", code, out)
	}
}

// TestKeptHeadsCatchARecomputedAndATruncatedChain does what the chain
// alone cannot see (each shown passing without heads): an owner edits a
// row and re-hashes the chain from there on, and removes a chain's newest
// rows.
func TestKeptHeadsCatchARecomputedAndATruncatedChain(t *testing.T) {
	pg, _ := edgeRows(t, 6)
	verify := verifier(t, pg)
	ctx := context.Background()
	var writer string
	if err := pg.Owner.QueryRow(ctx, "SELECT writer_id FROM api_audit_log WHERE writer_seq = 6").Scan(&writer); err != nil {
		t.Fatalf("the six rows are not one chain: %v", err)
	}
	heads := filepath.Join(t.TempDir(), "heads.json")
	keep := envHeadsFile + "=" + heads
	if code, out := verify(keep); code != 0 || !strings.Contains(out, `"heads_checked":0`) {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	if code, out := verify(keep); code != 0 || !strings.Contains(out, `"heads_checked":`) || strings.Contains(out, `"heads_checked":0`) {
		t.Fatalf("second run, heads kept: exit %d\n%s", code, out)
	}

	// Recompute: row 2 edited, rows 2-6 re-hashed, so every link holds.
	recompute(t, pg, writer, 2)
	if code, out := verify(); code != 0 {
		t.Fatalf("the recomputed chain should hold on its own (else this test shows nothing): exit %d\n%s", code, out)
	}
	code, out := verify(keep)
	if code != 1 || !strings.Contains(out, "(seq 6): rewritten") {
		t.Fatalf("recomputed chain against kept heads: exit %d\n%s", code, out)
	}
	if code, _ := verify(keep); code != 1 {
		t.Fatal("a red run replaced the heads that caught the break")
	}

	// Truncate: heads kept of the chain as it now is, then rows 5-6 go.
	heads2 := filepath.Join(t.TempDir(), "heads.json")
	keep2 := envHeadsFile + "=" + heads2
	if code, out := verify(keep2); code != 0 {
		t.Fatalf("new heads: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "DELETE FROM api_audit_log WHERE writer_id = '"+writer+"' AND writer_seq > 4")
	if code, out := verify(); code != 0 {
		t.Fatalf("the truncated chain should hold on its own: exit %d\n%s", code, out)
	}
	code, out = verify(keep2)
	if code != 1 || !strings.Contains(out, "rows from seq 5 on are missing: truncated") {
		t.Fatalf("truncated chain against kept heads: exit %d\n%s", code, out)
	}

	// A whole chain removed.
	heads3 := filepath.Join(t.TempDir(), "heads.json")
	keep3 := envHeadsFile + "=" + heads3
	if code, out := verify(keep3); code != 0 {
		t.Fatalf("heads of the cut chain: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "DELETE FROM api_audit_log WHERE writer_id = '"+writer+"'")
	code, out = verify(keep3)
	if code != 1 || !strings.Contains(out, "writer "+writer+": rows from seq 1 on are missing: truncated") {
		t.Fatalf("removed chain against kept heads: exit %d\n%s", code, out)
	}

	// A damaged heads file is an error, not a fresh start.
	if err := os.WriteFile(heads2, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(keep2); code != int(job.ExitError) {
		t.Fatalf("damaged heads file: exit %d\n%s", code, out)
	}
}

// recompute edits the row at seq from of writer's chain and re-hashes it
// and every later row, as someone with write access to the table and the
// code (the hash has no secret) could.
func recompute(t *testing.T, pg *testenv.PG, writer string, from int64) {
	t.Helper()
	ctx := context.Background()
	rows, err := pg.Owner.Query(ctx, `SELECT id, coalesce(key_id::text, ''), coalesce(user_id::text, ''), occurred_at,
	coalesce(host(source_ip), ''), coalesce(user_agent, ''), request_id, method, path,
	coalesce(resource_type, ''), coalesce(resource_id, ''), action, result, status_code, metadata::text,
	writer_id, writer_seq, prev_hash, row_hash, customer_digest
FROM api_audit_log WHERE writer_id = $1 ORDER BY writer_seq`, writer)
	if err != nil {
		t.Fatal(err)
	}
	type stored struct {
		id  int64
		row audit.Row
	}
	var chain []stored
	for rows.Next() {
		var s stored
		var status int16
		var meta string
		r := &s.row
		if err := rows.Scan(&s.id, &r.KeyID, &r.UserID, &r.OccurredAt, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Method, &r.Path,
			&r.ResourceType, &r.ResourceID, &r.Action, &r.Result, &status, &meta, &r.WriterID, &r.WriterSeq, &r.PrevHash, &r.RowHash,
			&r.CustomerDigest); err != nil {
			t.Fatal(err)
		}
		r.StatusCode = int(status)
		if r.Metadata, err = audit.CanonicalText(meta); err != nil {
			t.Fatal(err)
		}
		chain = append(chain, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var stmts []string
	var prev []byte
	for i := range chain {
		r := &chain[i].row
		if r.WriterSeq < from {
			prev = r.RowHash
			continue
		}
		if r.WriterSeq == from {
			r.SourceIP = "198.51.100.7"
		}
		r.PrevHash = prev
		r.RowHash = audit.Hash(r)
		prev = r.RowHash
		stmts = append(stmts, fmt.Sprintf("UPDATE api_audit_log SET source_ip = '%s', prev_hash = '\\x%x', row_hash = '\\x%x' WHERE id = %d",
			r.SourceIP, r.PrevHash, r.RowHash, chain[i].id))
	}
	asOwner(t, pg, stmts...)
}

func TestVerifyCommandNeedsADatabase(t *testing.T) {
	lock := t.TempDir()
	for name, dsn := range map[string]string{"no DSN": "", "unreachable database": "postgres://nobody@127.0.0.1:1/x?connect_timeout=1"} {
		res := job.Execute(context.Background(), spec(), func(k string) (string, bool) {
			switch k {
			case job.EnvLockDir:
				return lock, true
			case config.PGAppDSN:
				return dsn, dsn != ""
			}
			return "", false
		}, io.Discard, io.Discard)
		if res.ExitCode() != job.ExitError {
			t.Fatalf("%s: exit %d", name, res.ExitCode())
		}
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func newRequest(url, key string) (*http.Request, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err == nil {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return req, err
}
