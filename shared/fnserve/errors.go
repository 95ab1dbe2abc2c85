package fnserve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/problem"
)

// problemErrors makes the standard library's plain-text error answers
// (a ServeMux's 404 and 405, http.Error in middleware) problem+json, as
// every other error of the API is: a function's routes need not each
// repeat a fallback, and a path or method no route takes never answers
// text a client cannot parse.
func problemErrors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&errorWriter{ResponseWriter: w}, r)
	})
}

// errorWriter rewrites an error status sent as text/plain; anything else
// passes through untouched.
type errorWriter struct {
	http.ResponseWriter
	wrote   bool
	swallow bool // the plain-text body of a rewritten answer
}

func (e *errorWriter) WriteHeader(code int) {
	if e.wrote {
		e.ResponseWriter.WriteHeader(code) // superfluous: net/http says so
		return
	}
	e.wrote = true
	h := e.Header()
	if code < 400 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		e.ResponseWriter.WriteHeader(code)
		return
	}
	e.swallow = true
	h.Del("Content-Length")
	detail := problem.DetailForStatus(code)
	if allow := h.Get("Allow"); code == http.StatusMethodNotAllowed && allow != "" {
		detail = "use " + allow
	}
	problem.Write(e.ResponseWriter, problem.New(code, problem.CodeForStatus(code), detail))
}

func (e *errorWriter) Write(b []byte) (int, error) {
	if !e.wrote {
		e.WriteHeader(http.StatusOK)
	}
	if e.swallow {
		return len(b), nil
	}
	return e.ResponseWriter.Write(b)
}

// Flush lets streamed answers (CSV export) reach the client as written.
func (e *errorWriter) Flush() {
	if e.swallow {
		return
	}
	if f, ok := e.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap serves http.ResponseController.
func (e *errorWriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }

// LogFailure logs a failure to serve a request (a database error, say):
// as an error, unless err comes from a cancelled context, i.e. the client
// went away (or the function is stopping) while the request ran. That
// says nothing about the store, and a client could otherwise write error
// lines at will by closing its connections.
//
// Lines of one msg and one kind of error (PostgreSQL's SQLSTATE, or the
// error's type) are let through at most once per FailureLogEvery, each
// counting the failures it stands for: with its store down, a function
// under load would otherwise log every request it fails, while a new
// kind of failure (a grant missing, say) is still logged at once.
func LogFailure(log *zap.Logger, msg string, err error, fields ...zap.Field) {
	fields = append(fields, zap.Error(err))
	if errors.Is(err, context.Canceled) {
		log.Debug(msg+" (request cancelled)", fields...)
		return
	}
	g, _ := failureLogs.LoadOrStore(msg+"\x00"+errorKind(err), new(logevery.Gate))
	if n, ok := g.(*logevery.Gate).Allow(time.Now(), FailureLogEvery); ok {
		log.Error(msg, append(fields, zap.Int64("failures", n))...)
	}
}

// FailureLogEvery is how often LogFailure logs one message at most.
const FailureLogEvery = 30 * time.Second

// failureLogs holds LogFailure's gate per message and kind of error; the
// messages are the call sites' constants, and the kinds are SQLSTATEs
// and Go types, so it stays small.
var failureLogs sync.Map

// errorKind names err's kind for LogFailure: PostgreSQL's SQLSTATE if it
// carries one, else the innermost error's type.
func errorKind(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return fmt.Sprintf("%T", err)
		}
		err = next
	}
}
