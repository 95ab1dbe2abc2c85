package main

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// GET /api/v1/servers takes no parameters: one sent is 400 invalid_filter
// naming it, as the audit log answers an unknown filter, before the
// caller or the database is looked at. Without one the request goes on
// (here to the identity check, which has no identity to find: 500).
func TestTheListRefusesUnknownParameters(t *testing.T) {
	h := (&handler{}).routes()
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
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/servers"+tc.query, nil))
		var doc map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &doc)
		if rec.Code != tc.status || (tc.param != "" && (doc["code"] != "invalid_filter" || doc["param"] != tc.param)) {
			t.Errorf("%s: %d %v, want %d naming %q", tc.name, rec.Code, doc, tc.status, tc.param)
		}
	}
}
