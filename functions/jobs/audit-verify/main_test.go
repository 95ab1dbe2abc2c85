package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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
	writer := oneChain(t, pg, 6)
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

// storedRow is a row of a chain as stored, with its id.
type storedRow struct {
	id  int64
	row audit.Row
}

// readChain reads writer's chain, oldest row first.
func readChain(t *testing.T, pg *testenv.PG, writer string) []storedRow {
	t.Helper()
	rows, err := pg.Owner.Query(context.Background(), `SELECT id, coalesce(key_id::text, ''), coalesce(user_id::text, ''), occurred_at,
	coalesce(host(source_ip), ''), coalesce(user_agent, ''), request_id, method, path,
	coalesce(resource_type, ''), coalesce(resource_id, ''), action, result, status_code, metadata::text,
	writer_id, writer_seq, prev_hash, row_hash, coalesce(customer_id::text, ''), customer_digest
FROM api_audit_log WHERE writer_id = $1 ORDER BY writer_seq`, writer)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var chain []storedRow
	for rows.Next() {
		var s storedRow
		var status int16
		var meta string
		r := &s.row
		if err := rows.Scan(&s.id, &r.KeyID, &r.UserID, &r.OccurredAt, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Method, &r.Path,
			&r.ResourceType, &r.ResourceID, &r.Action, &r.Result, &status, &meta, &r.WriterID, &r.WriterSeq, &r.PrevHash, &r.RowHash,
			&r.CustomerID, &r.CustomerDigest); err != nil {
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
	return chain
}

// recompute edits the row at seq from of writer's chain and re-hashes it
// and every later row, as someone with write access to the table and the
// code (the hash has no secret) could.
func recompute(t *testing.T, pg *testenv.PG, writer string, from int64) {
	t.Helper()
	chain := readChain(t, pg, writer)
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

// copyChain stores writer's rows again as a whole new chain named to, as
// an edge started later writes one: a chain that holds.
func copyChain(t *testing.T, pg *testenv.PG, writer, to string) {
	t.Helper()
	var prev []byte
	for _, s := range readChain(t, pg, writer) {
		r := &s.row
		r.WriterID, r.PrevHash, r.RequestID = to, prev, r.RequestID+"c"
		r.RowHash = audit.Hash(r)
		prev = r.RowHash
		if _, err := pg.Owner.Exec(context.Background(), `INSERT INTO api_audit_log (customer_id, key_id, user_id, occurred_at, source_ip,
	user_agent, request_id, method, path, resource_type, resource_id, action, result, status_code, metadata,
	writer_id, writer_seq, prev_hash, row_hash, customer_digest)
VALUES (nullif($1, '')::uuid, nullif($2, '')::uuid, nullif($3, '')::uuid, $4, nullif($5, '')::inet, $6, $7, $8, $9,
	nullif($10, ''), nullif($11, ''), $12, $13, $14, $15::jsonb, $16, $17, $18, $19, $20)`,
			r.CustomerID, r.KeyID, r.UserID, r.OccurredAt, r.SourceIP, r.UserAgent, r.RequestID, r.Method, r.Path,
			r.ResourceType, r.ResourceID, r.Action, r.Result, int16(r.StatusCode), r.Metadata,
			r.WriterID, r.WriterSeq, r.PrevHash, r.RowHash, r.CustomerDigest); err != nil {
			t.Fatal(err)
		}
	}
}

// oneChain returns the writer of the edge's rows, which must be one chain
// of n rows.
func oneChain(t *testing.T, pg *testenv.PG, n int) string {
	t.Helper()
	var writer string
	if err := pg.Owner.QueryRow(context.Background(), "SELECT writer_id FROM api_audit_log WHERE writer_seq = $1", n).Scan(&writer); err != nil {
		t.Fatalf("the %d rows are not one chain: %v", n, err)
	}
	return writer
}

// TestABreakLeavesLaterChainsWatched: a break in one chain must not stop
// the heads of the others from moving on. A chain written after the
// break gets its head kept, so cutting it later is reported, while the
// broken chain keeps the head that caught its break.
func TestABreakLeavesLaterChainsWatched(t *testing.T) {
	pg, _ := edgeRows(t, 3)
	verify := verifier(t, pg)
	broken := oneChain(t, pg, 3)
	keep := envHeadsFile + "=" + filepath.Join(t.TempDir(), "heads.json")
	if code, out := verify(keep); code != 0 {
		t.Fatalf("clean log: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "UPDATE api_audit_log SET source_ip = '198.51.100.1' WHERE writer_id = '"+broken+"' AND writer_seq = 2")
	if code, out := verify(keep); code != 1 || !strings.Contains(out, "(seq 2): content") {
		t.Fatalf("broken chain: exit %d\n%s", code, out)
	}

	later := broken + "-later"
	copyChain(t, pg, broken, later) // written after the break; holds
	code, out := verify(keep)
	if code != 1 || strings.Contains(out, "writer "+later) {
		t.Fatalf("a new chain that holds, beside the broken one: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "DELETE FROM api_audit_log WHERE writer_id = '"+later+"' AND writer_seq = 3")
	code, out = verify(keep)
	if code != 1 || !strings.Contains(out, "writer "+later+": rows from seq 3 on are missing: truncated") {
		t.Fatalf("the later chain cut after a red run: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "writer "+broken+": row id") {
		t.Fatalf("the first break is no longer reported:\n%s", out)
	}
}

// TestAnAcceptedBreakIsQuietButANewOneIsNot: a break listed as accepted
// no longer makes the run red, and the walk goes on past it, so a second
// break, in the same chain or another, still does.
func TestAnAcceptedBreakIsQuietButANewOneIsNot(t *testing.T) {
	pg, _ := edgeRows(t, 5)
	verify := verifier(t, pg)
	writer := oneChain(t, pg, 5)
	other := writer + "-other"
	copyChain(t, pg, writer, other)
	dir := t.TempDir()
	keep := envHeadsFile + "=" + filepath.Join(dir, "heads.json")
	list := filepath.Join(dir, "accepted")
	accept := envAcceptedFile + "=" + list
	if code, out := verify(keep); code != 0 {
		t.Fatalf("clean log: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "UPDATE api_audit_log SET source_ip = '198.51.100.1' WHERE writer_id = '"+writer+"' AND writer_seq = 2")
	code, out := verify(keep)
	found := breakEntries(t, out)
	if code != 1 || len(found) != 1 || !strings.HasPrefix(found[0], writer+" 2 content ") {
		t.Fatalf("the break before it is accepted: exit %d\n%s", code, out)
	}
	entry := found[0]
	if err := os.WriteFile(list, []byte("# restored from backup after the incident\n"+entry+"  # checked\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = verify(keep, accept)
	if code != 0 || !strings.Contains(out, `"accepted_breaks":["writer `+writer+`: row id`) {
		t.Fatalf("accepted break: exit %d\n%s", code, out)
	}

	// Past the accepted break, the chain is still walked.
	asOwner(t, pg, "UPDATE api_audit_log SET user_agent = 'edited' WHERE writer_id = '"+writer+"' AND writer_seq = 4")
	code, out = verify(keep, accept)
	second := breakEntries(t, out)
	if code != 1 || !strings.Contains(out, "(seq 4): content") || len(second) != 1 || !strings.HasPrefix(second[0], writer+" 4 content ") {
		t.Fatalf("a second break in the chain of an accepted one: exit %d\n%s", code, out)
	}
	// And another chain's break is its own.
	if err := os.WriteFile(list, []byte(entry+"\n"+second[0]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(keep, accept); code != 0 {
		t.Fatalf("both breaks accepted: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "DELETE FROM api_audit_log WHERE writer_id = '"+other+"' AND writer_seq = 5")
	code, out = verify(keep, accept)
	if code != 1 || !strings.Contains(out, "writer "+other+": rows from seq 5 on are missing: truncated") {
		t.Fatalf("a break in another chain: exit %d\n%s", code, out)
	}

	// The row accepted as edited, edited again: red again.
	asOwner(t, pg, "DELETE FROM api_audit_log WHERE writer_id = '"+other+"'")
	if err := os.WriteFile(list, []byte(entry+"\n"+second[0]+"\n"+other+" 1 truncated - -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(keep, accept); code != 0 {
		t.Fatalf("every break accepted: exit %d\n%s", code, out)
	}
	asOwner(t, pg, "UPDATE api_audit_log SET source_ip = '198.51.100.2' WHERE writer_id = '"+writer+"' AND writer_seq = 2")
	if code, out := verify(keep, accept); code != 1 || !strings.Contains(out, "(seq 2): content") {
		t.Fatalf("an accepted row edited again: exit %d\n%s", code, out)
	}

	// A list that cannot be read is an error, not an empty list.
	if err := os.WriteFile(list, []byte(writer+" two content - -\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(keep, accept); code != int(job.ExitError) || !strings.Contains(out, "line 1") {
		t.Fatalf("damaged list: exit %d\n%s", code, out)
	}
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

// breakEntries are the break_entries a red run printed in its report.
func breakEntries(t *testing.T, out string) []string {
	t.Helper()
	i := strings.Index(out, `"break_entries":`)
	if i < 0 {
		return nil
	}
	var entries []string
	if err := json.NewDecoder(strings.NewReader(out[i+len(`"break_entries":`):])).Decode(&entries); err != nil {
		t.Fatalf("break_entries: %v\n%s", err, out)
	}
	return entries
}

// account-purge anonymises a due account's rows before it deletes the
// account, in batches, so a run cut short leaves some rows anonymised
// while the customer still exists. Those rows are being purged, not moved
// out of a live customer's log: verify stays green.
func TestRowsAnonymisedBeforeAPurgeAreNotMoved(t *testing.T) {
	pg, _ := edgeRows(t, 4)
	verify := verifier(t, pg)
	ctx := context.Background()
	var customer string
	if err := pg.Owner.QueryRow(ctx, "SELECT customer_id::text FROM api_audit_log LIMIT 1").Scan(&customer); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Owner.Exec(ctx, `UPDATE customers SET delete_after = now() - interval '1 hour',
		deletion_requested_at = now() - interval '2 hours' WHERE id = $1`, customer); err != nil {
		t.Fatal(err)
	}
	purge, err := pgxpool.New(ctx, pg.FunctionDSNs["GUARDIAN_PG_DSN_ACCOUNT_PURGE"])
	if err != nil {
		t.Fatal(err)
	}
	defer purge.Close()
	var n int64
	if err := purge.QueryRow(ctx, "SELECT forget_audit_rows_of($1::uuid, 2)", customer).Scan(&n); err != nil || n != 2 {
		t.Fatalf("a first batch: %d rows, %v", n, err)
	}
	if code, out := verify(); code != 0 || !strings.Contains(out, `"ok":true`) {
		t.Fatalf("a purge under way: exit %d\n%s", code, out)
	}
}
