package problem

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestCheckQuery(t *testing.T) {
	cases := []struct {
		name, query string
		known       []string
		param, why  string // "" when accepted
	}{
		{"no parameters on a route that takes none", "", nil, "", ""},
		{"an empty query string", "&", nil, "", ""},
		{"any parameter on a route that takes none", "limit=10", nil, "limit", "unknown parameter (this route takes none)"},
		{"a parameter without a value", "verbose", nil, "verbose", "unknown parameter (this route takes none)"},
		{"known parameters", "since=x&limit=3", []string{"since", "limit"}, "", ""},
		{"a misspelled one", "limt=3", []string{"since", "limit"}, "limt", "unknown parameter (since, limit)"},
		{"a known one twice", "limit=3&limit=4", []string{"limit"}, "limit", "give it once"},
		{"a name that is a sentence is not echoed", "Your+account+is+locked.+Call+%2B1-555-0100=1", nil, "(a parameter)", "unknown parameter (this route takes none)"},
		{"a long name is not echoed", strings.Repeat("a", 33) + "=1", nil, "(a parameter)", "unknown parameter (this route takes none)"},
	}
	for _, tc := range cases {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		qe := CheckQuery(q, tc.known...)
		switch {
		case tc.param == "" && qe != nil:
			t.Errorf("%s: refused: %v", tc.name, qe)
		case tc.param != "" && (qe == nil || qe.Param != tc.param || qe.Why != tc.why):
			t.Errorf("%s: %+v, want %s: %s", tc.name, qe, tc.param, tc.why)
		case qe != nil:
			if p := qe.Problem(); p.Status != 400 || p.Code != "invalid_filter" || p.Extra["param"] != tc.param || p.Detail != tc.param+": "+tc.why {
				t.Errorf("%s: problem %+v", tc.name, p)
			}
		}
	}
}

// Two broken rules get the same answer every time (a map's order would
// name either at random).
func TestCheckQueryNamesTheSameParameterEveryTime(t *testing.T) {
	q := url.Values{"zeta": {"1"}, "alpha": {"1"}, "mid": {"1", "2"}}
	for range 50 {
		if qe := CheckQuery(q, "mid"); qe == nil || qe.Param != "alpha" {
			t.Fatalf("got %+v, want alpha (first by name)", qe)
		}
	}
}

func TestNoQuery(t *testing.T) {
	reached := 0
	h := NoQuery(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached++ }))
	for _, tc := range []struct {
		target string
		param  string // "" when it reaches the handler
	}{
		{"/api/v1/servers/x", ""},
		{"/api/v1/servers/x?", ""},
		{"/api/v1/servers/x?dry_run=1", "dry_run"},
		{"/api/v1/whoami?a=1&a=2", "a"},
		{"/settings/keys?tab=1", ""}, // pages and sign-in are not the API
		{"/auth/google/callback?code=c&state=s", ""},
	} {
		before := reached
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("DELETE", tc.target, nil))
		if tc.param == "" {
			if reached != before+1 {
				t.Errorf("%s: refused: %d %s", tc.target, rec.Code, rec.Body)
			}
			continue
		}
		var doc map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &doc)
		if reached != before || rec.Code != 400 || doc["code"] != "invalid_filter" || doc["param"] != tc.param {
			t.Errorf("%s: reached %v, %d %s; want 400 invalid_filter naming %s", tc.target, reached != before, rec.Code, rec.Body, tc.param)
		}
	}
}

// CheckQuery refuses exactly the queries with a parameter it does not
// know or one given twice, naming the first such by name, in a form that
// cannot carry a sentence; NoQuery then answers 400 and calls nothing.
func FuzzCheckQuery(f *testing.F) {
	f.Add("since=1&until=2")
	f.Add("limt=10")
	f.Add("since=1&since=2&zz=3")
	f.Add("this+account+is+locked%2C+call+555=1")
	f.Add("a=1&b")
	f.Add("=")
	f.Fuzz(func(t *testing.T, raw string) {
		known := []string{"since", "until", "a"}
		q, _ := url.ParseQuery(raw) // as Request.URL.Query does, errors ignored
		var first string
		bad := false
		for _, k := range slices.Sorted(maps.Keys(q)) {
			if !slices.Contains(known, k) || len(q[k]) > 1 {
				first, bad = k, true
				break
			}
		}
		qe := CheckQuery(q, known...)
		switch {
		case !bad && qe != nil:
			t.Fatalf("%q refused: %v", raw, qe)
		case bad && qe == nil:
			t.Fatalf("%q accepted, with %q", raw, first)
		case qe == nil:
			return
		}
		want := first
		if !slices.Contains(known, first) && !regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`).MatchString(first) {
			want = "(a parameter)"
		}
		if qe.Param != want {
			t.Fatalf("%q: names %q, want %q", raw, qe.Param, want)
		}

		called := false
		h := NoQuery(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
		r := httptest.NewRequest(http.MethodDelete, "/api/v1/x", nil)
		r.URL.RawQuery = raw
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if CheckQuery(r.URL.Query()) != nil && (called || rec.Code != http.StatusBadRequest) {
			t.Fatalf("%q: NoQuery answered %d, handler called %v", raw, rec.Code, called)
		}
	})
}
