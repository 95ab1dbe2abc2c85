// Package problemtest holds checks of problem+json answers that tests of
// several functions share.
package problemtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// RefusesQuery checks that h answers GET path, a route that takes no
// query parameters, with 400 invalid_filter naming any one sent (as the
// audit log answers an unknown filter), before the caller or the database
// is looked at. Without one the request goes on, here to the identity
// check, which finds no identity in a bare request: 500.
func RefusesQuery(t *testing.T, h http.Handler, path string) {
	t.Helper()
	for _, tc := range []struct {
		name, query, param string
		status             int
	}{
		{"a paging parameter", "?limit=10", "limit", 400},
		{"another list's filter", "?since=2026-11-01T00:00:00Z", "since", 400},
		{"a parameter without a value", "?verbose", "verbose", 400},
		{"a parameter given twice", "?x=1&x=2", "x", 400},
		{"a name that is not echoed", "?Your+account+is+locked=1", "(a parameter)", 400},
		{"no parameters", "", "", 500},
		{"an empty query string", "?", "", 500},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path+tc.query, nil))
		var doc map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &doc)
		if rec.Code != tc.status || (tc.param != "" && (doc["code"] != "invalid_filter" || doc["param"] != tc.param)) {
			t.Errorf("%s %s: %d %v, want %d naming %q", path, tc.name, rec.Code, doc, tc.status, tc.param)
		}
	}
}
