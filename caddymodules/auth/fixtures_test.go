package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

var (
	pepper = []byte(strings.Repeat("p", 32))
	secret = []byte(strings.Repeat("s", 32))
)

// world is one customer with keys of every kind and a session, in a
// database of the test's own.
type world struct {
	pg                                  *testenv.PG
	db                                  *pgxpool.Pool
	c                                   *testenv.Customer
	customer, user, server, otherServer string
	read, write, admin, collector       string // plaintext keys
	sessionID, token                    string
}

func newWorld(t testing.TB) *world {
	t.Helper()
	pg := testenv.Postgres(t)
	c := testenv.NewCustomer(t, pg.Owner, pepper, secret)
	w := &world{pg: pg, db: pg.Owner, c: c, customer: c.ID, user: c.UserID, server: c.ServerID, otherServer: c.OtherServerID}
	w.read = c.AccountKey(t, "read")
	w.write = c.AccountKey(t, "write")
	w.admin = c.AccountKey(t, "admin")
	w.collector = c.CollectorKey(t, w.server)
	w.sessionID, w.token = c.Session(t)
	return w
}

// authenticator returns a running Authenticator on the world's database
// as the runtime role, waiting until its revocation listener is up. log,
// if given, is its logger (set before it starts, as its goroutines read
// it).
func (w *world) authenticator(t testing.TB, log ...*zap.Logger) *Authenticator {
	t.Helper()
	cfg := Config{DSN: w.pg.AppDSN, Pepper: pepper, SessionSecret: secret, TouchInterval: 50 * time.Millisecond}
	if len(log) > 0 {
		cfg.Log = log[0]
	}
	a, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !a.Listening() {
		if time.Now().After(deadline) {
			t.Fatal("listener never came up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return a
}

// observed is the world's authenticator and a handler around it, both
// logging to the returned observer at DEBUG.
func (w *world) observed(t testing.TB) (*Authenticator, *Handler, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	a := w.authenticator(t, zap.New(core))
	h := handler(a, Handler{})
	h.log = zap.New(core)
	return a, h, logs
}

func handler(a *Authenticator, h Handler) *Handler {
	h.init(a, "")
	return &h
}

// result is what one request through the handler came to.
type result struct {
	status  int
	code    string
	id      *identity.Identity
	header  http.Header
	failure string // VarFailure: why auth refused
}

func do(t *testing.T, h *Handler, r *http.Request) result {
	t.Helper()
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if vars == nil {
		vars = map[string]any{}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	}
	rec := httptest.NewRecorder()
	var got result
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		got.id, _ = caddyhttp.GetVar(r.Context(), identity.VarKey).(*identity.Identity)
		w.WriteHeader(http.StatusOK)
		return nil
	})
	err := h.ServeHTTP(rec, r, next)
	got.header = rec.Header()
	got.failure, _ = vars[VarFailure].(string)
	if err == nil {
		got.status = rec.Code
		return got
	}
	var he caddyhttp.HandlerError
	var p *problem.Problem
	if !asHandlerError(err, &he) || !asProblem(err, &p) {
		t.Fatalf("error %v is not a problem", err)
	}
	got.status, got.code = he.StatusCode, p.Code
	return got
}

func bearer(method, path, key string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	r.Header.Set("Authorization", "Bearer "+key)
	return r
}

func withCookie(method, path, token string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	r.AddCookie(&http.Cookie{Name: session.CookieName, Value: token})
	return r
}

func generateAccount() (string, error) { return apikey.Generate(apikey.Account) }
