package problem

import (
	"net/url"
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
