package main

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseFilterRefusesBadInput(t *testing.T) {
	cases := []struct{ query, param string }{
		{"since=yesterday", "since"},
		{"until=2026-13-01T00:00:00Z", "until"},
		{"since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z", "until"},
		{"action=hack", "action"},
		{"key_id=not-a-uuid", "key_id"},
		{"key_id=0B0E7A52-6C1A-4F4E-9A51-5B2F7C6F1D11", "key_id"},
		{"limit=0", "limit"},
		{"limit=201", "limit"},
		{"limit=ten", "limit"},
		{"cursor=!!!", "cursor"},
		{"cursor=" + strings.Repeat("A", 80), "cursor"},
		{"cursor=bm90LWEtY3Vyc29y", "cursor"},
		{"format=xml", "format"},
		{"customer_id=someone-else", "customer_id"},
		{"action=read&action=list", "action"},
		// Not echoed: a link could make the page show it as Guardian's text.
		{"Security+notice:+this+account+is+locked.+Call+%2B1-555-0100=1", "(a parameter)"},
		{strings.Repeat("a", 33) + "=1", "(a parameter)"},
	}
	for _, tc := range cases {
		q, _ := url.ParseQuery(tc.query)
		_, err := ParseFilter(q)
		fe, ok := err.(*FilterError)
		if !ok || fe.Param != tc.param {
			t.Errorf("%s: err = %v, want a problem with %s", tc.query, err, tc.param)
		}
	}
}

func TestParseFilterAcceptsAndCursorRoundTrips(t *testing.T) {
	at := time.Date(2026, 11, 28, 12, 0, 0, 123456000, time.UTC)
	q, _ := url.ParseQuery("since=2026-11-01T00:00:00Z&action=auth_failed&key_id=0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11&limit=200&cursor=" + encodeCursor(at, 42))
	f, err := ParseFilter(q)
	if err != nil || f.Limit != 200 || f.Action != "auth_failed" || f.AfterID != 42 || !f.AfterTime.Equal(at) || f.Since == nil {
		t.Fatalf("%+v %v", f, err)
	}
	if f, _ := ParseFilter(url.Values{}); f.Limit != DefaultLimit {
		t.Fatalf("default limit %d", f.Limit)
	}
}

func TestCSVSafe(t *testing.T) {
	for in, want := range map[string]string{
		"=cmd()":                          "'=cmd()",
		"+1":                              "'+1",
		"@x":                              "'@x",
		"-1":                              "'-1",
		"\t=1":                            "'\t'=1",
		"\r":                              "'\r",
		"":                                "",
		"curl/8":                          "curl/8",
		"a-b=c+d@e":                       "a-b=c+d@e",
		"Mozilla/5.0 (X11; Linux x86_64)": "Mozilla/5.0 (X11; Linux x86_64)",
		// A cell begins after a separator a spreadsheet may split at.
		"Mozilla/5.0;=WEBSERVICE(CHAR(104));x": "Mozilla/5.0;'=WEBSERVICE(CHAR(104));x",
		"a; =1":                                "a; '=1",
		`a;"=1"`:                               `a;"'=1"`,
		`a;""@x`:                               `a;""'@x`,
		"a,+1":                                 "a,'+1",
		"a\t-1":                                "a\t'-1",
		"a\n=1":                                "a\n'=1",
		" =1":                                  " '=1",
		`{"name":"x;=1"}`:                      `{"name":"x;'=1"}`,
		"=;=":                                  "'=;'=",
	} {
		if got := csvSafe(in); got != want {
			t.Errorf("csvSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

// formulaCell returns a cell of v that a spreadsheet would run as a
// formula, whichever of , ; tab CR LF it splits cells at, or "".
func formulaCell(v string) string {
	for _, cell := range strings.FieldsFunc("\n"+v, func(r rune) bool { return strings.ContainsRune(",;\r\n", r) }) {
		for _, part := range strings.SplitAfter(cell, "\t") {
			if t := strings.TrimLeft(part, ` "`); t != "" && strings.ContainsRune("=+-@\t\r", rune(t[0])) {
				return part
			}
		}
	}
	return ""
}

func FuzzCSVSafe(f *testing.F) {
	for _, s := range []string{"=1", "Mozilla/5.0;=WEBSERVICE(1)", `a;"=1"`, "a\t\t-1", " ,@x", "'=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := csvSafe(s)
		if c := formulaCell(got); c != "" {
			t.Fatalf("csvSafe(%q) = %q: cell %q runs as a formula", s, got, c)
		}
		// Only ' is added: without them, the value is what it was.
		if strings.ReplaceAll(got, "'", "") != strings.ReplaceAll(s, "'", "") {
			t.Fatalf("csvSafe(%q) = %q changed more than it added", s, got)
		}
	})
}

// Every value of an exported record that a client chose is defused,
// the method too (Go's server accepts "-1+1" as a method).
func TestCSVRecordDefusesClientValues(t *testing.T) {
	ua, rt := "Mozilla/5.0;=HYPERLINK(\"x\")", "@x"
	e := Entry{ID: 7, Method: "-1+1", Path: "+/x", RequestID: "=1", UserAgent: &ua, ResourceType: &rt,
		Action: "read", Result: "denied", StatusCode: 405, Metadata: json.RawMessage(`{}`)}
	rec := csvRecord(e)
	if len(rec) != len(CSVHeader) {
		t.Fatalf("%d values for %d columns", len(rec), len(CSVHeader))
	}
	for i, v := range rec {
		if c := formulaCell(v); c != "" {
			t.Errorf("%s = %q would run %q as a formula", CSVHeader[i], v, c)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	f.Add("since=2026-11-01T00:00:00Z&limit=5")
	f.Add("cursor=MTc2NDMzMTIwMDAwMDAwMC40Mg")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseFilter(q)
		if err == nil && (flt.Limit < 1 || flt.Limit > MaxLimit) {
			t.Fatalf("accepted limit %d from %q", flt.Limit, raw)
		}
	})
}
