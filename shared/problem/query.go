package problem

import (
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// QueryError names a query parameter a route refuses.
type QueryError struct{ Param, Why string }

func (e *QueryError) Error() string { return e.Param + ": " + e.Why }

// Problem is the answer to the refused query: 400 invalid_filter, the
// parameter in member "param".
func (e *QueryError) Problem() *Problem {
	p := New(http.StatusBadRequest, "invalid_filter", e.Error())
	p.Extra = map[string]any{"param": e.Param}
	return p
}

// paramName is how an unknown parameter's name may be echoed back: a
// plain name. Anything else (spaces, punctuation, a sentence) is not
// repeated, or a link could make a page display the attacker's text
// ("this account is locked, call …") as Guardian's own.
var paramName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// CheckQuery refuses a query holding a parameter not in known, or one
// given more than once, and returns nil for any other: a client's
// misspelled filter (limt=10) or one a route does not have (the
// audit log's since on the key list) must not be silently ignored, or
// its answer is wrong without a word.
func CheckQuery(q url.Values, known ...string) *QueryError {
	// In name order, so that a query breaking two rules gets the same
	// answer every time.
	for _, k := range slices.Sorted(maps.Keys(q)) {
		v := q[k]
		if !slices.Contains(known, k) {
			name := k
			if !paramName.MatchString(name) {
				name = "(a parameter)"
			}
			takes := "this route takes none"
			if len(known) > 0 {
				takes = strings.Join(known, ", ")
			}
			return &QueryError{name, "unknown parameter (" + takes + ")"}
		}
		if len(v) > 1 {
			return &QueryError{k, "give it once"}
		}
	}
	return nil
}

// NoQuery refuses, as CheckQuery does, any query parameter on an API
// route (a path under /api/) that h serves, for functions none of whose
// API routes take one: `DELETE /api/v1/servers/{id}?dry_run=1` must not
// delete. Other paths (pages, sign-in) pass as they are.
func NoQuery(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" && strings.HasPrefix(r.URL.Path, "/api/") {
			if qe := CheckQuery(r.URL.Query()); qe != nil {
				Write(w, qe.Problem())
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
