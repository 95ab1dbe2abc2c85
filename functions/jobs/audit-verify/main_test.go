package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestVerifyCommandFailsAtAnEditedRow runs the built job against rows
// written by the real edge, then edits one row as the owner.
func TestVerifyCommandFailsAtAnEditedRow(t *testing.T) {
	env, c, pg := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	key := c.AccountKey(t, "read")
	for range 5 {
		req, _ := newRequest(stack.URL+"/api/v1/whoami", key)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	bin := testenv.Build(t, "./functions/jobs/audit-verify")
	lockDir := t.TempDir()
	verify := func() (int, string) {
		cmd := exec.Command(bin)
		cmd.Env = []string{"GUARDIAN_PG_APP_DSN=" + pg.AppDSN, "GUARDIAN_JOB_LOCK_DIR=" + lockDir}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		_ = pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log").Scan(&n)
		if n == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, out := verify(); code != 0 || !strings.Contains(out, `"ok":true`) || !strings.Contains(out, `"rows":5`) {
		t.Fatalf("clean log: exit %d\n%s", code, out)
	}
	var victim string
	ctx := context.Background()
	if err := pg.Owner.QueryRow(ctx, "SELECT id::text FROM api_audit_log ORDER BY writer_seq OFFSET 2 LIMIT 1").Scan(&victim); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete",
		"UPDATE api_audit_log SET source_ip = '198.51.100.1' WHERE id = " + victim,
		"ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete",
	} {
		if _, err := pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	code, out := verify()
	if code != 1 || !strings.Contains(out, "row id "+victim+" ") || !strings.Contains(out, "content") {
		t.Fatalf("edited log: exit %d\n%s", code, out)
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
