package audit

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/testenv"
)

// A busy chain lingers for the rows announced to it, and no longer: once
// every announced row is queued or withdrawn, it commits without waiting
// for its timer (here an hour).
func TestALingerEndsWhenNoAnnouncedRowIsLeft(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := lingeringWriter(t, pg, 10)
	ctx := context.Background()
	record := func(r *audit.Row) chan error {
		done := make(chan error, 1)
		go func() { done <- w.recordAnnounced(time.Second, r) }()
		return done
	}
	waiting := func(done chan error, what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: committed while an announced row was still to come (%v)", what, err)
		case <-time.After(300 * time.Millisecond):
		}
	}

	w.announce()
	awaitRows(t, record(testRow(0)), 1, "a row after no batch (idle)")

	// The chain is busy now. Two requests begin; the first row waits for
	// the second, and both commit together as soon as it is queued.
	w.announce()
	w.announce()
	first := record(testRow(1))
	waiting(first, "the first of two announced rows")
	awaitRows(t, record(testRow(2)), 1, "the second row")
	awaitRows(t, first, 1, "the first row")
	var xacts int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(DISTINCT xmin::text) FROM api_audit_log WHERE writer_seq IN (2, 3)").Scan(&xacts); err != nil {
		t.Fatal(err)
	}
	if xacts != 1 {
		t.Fatalf("the two announced rows were committed in %d transactions, want 1", xacts)
	}

	// A request whose row will not come (an anonymous one) withdraws it,
	// and the wait ends too.
	w.announce()
	w.announce()
	third := record(testRow(3))
	waiting(third, "a row beside a request still running")
	w.withdraw()
	awaitRows(t, third, 1, "the row after the other request withdrew")
	if got := count(t, pg.Owner); got != 4 {
		t.Fatalf("%d rows, want 4", got)
	}
	if n := w.coming.n.Load(); n != 0 {
		t.Fatalf("%d rows still announced, want 0", n)
	}
}

// Every way through the handler ends its request's announcement, or each
// later linger would wait out its timer for a row that never comes.
func TestEveryRequestEndsItsAnnouncement(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	open := newWriter(t, pg.AppDSN, 1<<20)
	closed, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "closed")})
	if err != nil {
		t.Fatal(err)
	}
	_ = closed.Close() // every row is refused

	answer := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = w.Write([]byte("ok"))
		return nil
	})
	failNothingWritten := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("function down"))
	})
	panics := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		panic("a handler bug")
	})
	cases := []struct {
		name   string
		writer *Writer
		authed bool
		next   caddyhttp.Handler
	}{
		{"audited, answered", open, true, answer},
		{"anonymous, answered", open, false, answer},
		{"audited, error and nothing written", open, true, failNothingWritten},
		{"anonymous, error and nothing written", open, false, failNothingWritten},
		{"audited, the row refused", closed, true, answer},
		{"audited, the handler panics", open, true, panics},
	}
	for _, tc := range cases {
		h := &Handler{writer: tc.writer, log: zap.NewNop(), Timeout: caddy.Duration(time.Second)}
		req := httptest.NewRequest("GET", "/api/v1/whoami", nil)
		ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{})
		if tc.authed {
			caddyhttp.SetVar(ctx, identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "00000000-0000-4000-8000-000000000001", KeyID: "00000000-0000-4000-8000-000000000002", Scope: "read"})
		}
		func() {
			defer func() { _ = recover() }()
			_ = h.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx), tc.next)
		}()
		if n := tc.writer.coming.n.Load(); n != 0 {
			t.Errorf("%s: %d rows still announced, want 0", tc.name, n)
		}
	}
	if got := count(t, pg.Owner); got != 2 {
		t.Fatalf("%d rows, want 2 (the audited requests the open writer answered)", got)
	}
}
