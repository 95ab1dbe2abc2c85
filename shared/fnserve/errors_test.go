package fnserve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/problem"
)

func TestPlainTextErrorsBecomeProblems(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /things", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "a list")
	})
	mux.HandleFunc("POST /things/{id}/problem", func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, problem.New(http.StatusConflict, "already_done", "it is done"))
	})
	mux.HandleFunc("GET /teapot", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "short and stout", http.StatusTeapot)
	})
	h := problemErrors(mux)
	cases := []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"GET", "/nothing", 404, "not_found", ""},
		{"DELETE", "/things", 405, "method_not_allowed", "GET, HEAD"},
		{"OPTIONS", "/things", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/teapot", 418, "error", ""},
		{"POST", "/things/1/problem", 409, "already_done", ""},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != c.status || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Errorf("%s %s: %d %q", c.method, c.path, rec.Code, rec.Header().Get("Content-Type"))
			continue
		}
		var doc map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
			t.Errorf("%s %s: body %q: %v", c.method, c.path, rec.Body, err)
			continue
		}
		if doc["code"] != c.code || doc["status"] != float64(c.status) || doc["detail"] == "" {
			t.Errorf("%s %s: %v", c.method, c.path, doc)
		}
		if got := rec.Header().Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
	// Answers that are not errors pass as they are, plain text included.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/things", nil))
	if rec.Code != 200 || rec.Body.String() != "a list" {
		t.Fatalf("ok answer changed: %d %q", rec.Code, rec.Body)
	}
}

// A failure caused by the request's own cancellation is not an error of
// the function's store; any other failure is, logged once per interval
// per message with the count of failures it stands for.
func TestLogFailure(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	const msg = "TestLogFailure: database error"
	LogFailure(log, msg, fmt.Errorf("query: %w", ctx.Err()))
	LogFailure(log, msg, errors.New("connection refused"), zap.String("server_id", "s"))
	entries := logs.All()
	if len(entries) != 2 || entries[0].Level != zap.DebugLevel || entries[1].Level != zap.ErrorLevel {
		t.Fatalf("logged %+v; want a debug line for the cancelled request, then an error", entries)
	}
	if f := entries[1].ContextMap(); entries[1].Message != msg || f["server_id"] != "s" || f["error"] != "connection refused" || f["failures"] != int64(1) {
		t.Errorf("error line %q %v", entries[1].Message, f)
	}
	for range 3 {
		LogFailure(log, msg, errors.New("connection refused"))
	}
	LogFailure(log, "TestLogFailure: another message", errors.New("timeout"))
	// Another kind of error under the same message is logged at once.
	LogFailure(log, msg, fmt.Errorf("insert: %w", &pgconn.PgError{Code: "42501", Message: "permission denied"}))
	if all := logs.FilterMessage(msg).All(); len(all) != 2 || !strings.Contains(fmt.Sprint(all[1].ContextMap()["error"]), "42501") {
		t.Fatalf("a permission error within the interval of another error: %d lines, want it logged", len(all))
	}
	if got := logs.FilterMessage(msg).Len(); got != 2 {
		t.Fatalf("%d lines of %q after 3 more failures within the interval and one of another kind, want 2", got, msg)
	}
	if logs.FilterMessage("TestLogFailure: another message").Len() != 1 {
		t.Fatal("another message was held back by the first one's gate")
	}
	g, _ := failureLogs.Load(msg + "\x00" + errorKind(errors.New("connection refused")))
	g.(*logevery.Gate).Pass()
	LogFailure(log, msg, errors.New("connection refused"))
	last := logs.FilterMessage(msg).All()
	if len(last) != 3 || last[2].ContextMap()["failures"] != int64(4) {
		t.Fatalf("after the interval: %d lines, the last %v; want a line counting 4", len(last), last[len(last)-1].ContextMap())
	}
}
