package main

import (
	"encoding/json"
	"net/url"
	"slices"
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
		{"key_id=0B0E7A52-6C1A-4F4E-9A51-5B2F7C6F1D1", "key_id"},
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
	if f, err := ParseFilter(url.Values{"key_id": {"0B0E7A52-6C1A-4F4E-9A51-5B2F7C6F1D11"}}); err != nil || f.KeyID != "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11" {
		t.Fatalf("an upper-case key id: %+v %v, want it read in lower case", f, err)
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

// ParseFilter takes only the parameters it knows, each once, and every
// one it takes is what the query says, checked by the test's own rules:
// RFC 3339 times with since not after until, an action of the log, a
// UUID key id (read in lower case), a limit of 1 to MaxLimit (DefaultLimit when
// absent), a cursor this API could have given out, json or csv. A refusal
// names the parameter, and never echoes a name that is not a plain one.
func FuzzParseFilter(f *testing.F) {
	f.Add("since=2026-11-01T00:00:00Z&limit=5")
	f.Add("cursor=MTc2NDMzMTIwMDAwMDAwMC40Mg")
	f.Add("since=2026-11-01T00:00:00Z&action=auth_failed&key_id=0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11&limit=200&cursor=" +
		encodeCursor(time.Date(2026, 11, 28, 12, 0, 0, 123456000, time.UTC), 42))
	f.Add("since=2026-11-01T00:00:00%2B02:00&until=2026-11-01T00:00:00Z&format=csv")
	for _, q := range []string{
		"since=yesterday", "until=2026-13-01T00:00:00Z", "since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z",
		"action=hack", "key_id=not-a-uuid", "key_id=0B0E7A52-6C1A-4F4E-9A51-5B2F7C6F1D11", "limit=0", "limit=201", "limit=ten",
		"cursor=!!!", "cursor=bm90LWEtY3Vyc29y", "format=xml", "customer_id=someone-else", "action=read&action=list",
		"Security+notice:+this+account+is+locked.+Call+%2B1-555-0100=1", "limit=+7", "limit=007&format=json",
	} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseFilter(q)
		if err != nil {
			fe, ok := err.(*FilterError)
			if !ok || fe.Param == "" || fe.Why == "" {
				t.Fatalf("%q: refused with %v, not a FilterError", raw, err)
			}
			if !slices.Contains(filterParams, fe.Param) && fe.Param != "(a parameter)" && (!plainName(fe.Param) || q[fe.Param] == nil) {
				t.Fatalf("%q: the refusal names %q", raw, fe.Param)
			}
			return
		}
		for k, v := range q {
			if !slices.Contains(filterParams, k) || len(v) != 1 {
				t.Fatalf("%q: accepted the parameter %q given %d times", raw, k, len(v))
			}
		}
		checkTime := func(name string, got *time.Time) {
			s := q.Get(name)
			if s == "" {
				if got != nil {
					t.Fatalf("%q: %s is %v without a %s", raw, name, got, name)
				}
				return
			}
			want, err := time.Parse(time.RFC3339Nano, s)
			if err != nil || got == nil || !got.Equal(want) {
				t.Fatalf("%q: %s is %v, want %v (%v)", raw, name, got, want, err)
			}
		}
		checkTime("since", flt.Since)
		checkTime("until", flt.Until)
		if flt.Since != nil && flt.Until != nil && flt.Since.After(*flt.Until) {
			t.Fatalf("%q: since %v after until %v", raw, flt.Since, flt.Until)
		}
		if flt.Action != q.Get("action") || flt.Action != "" && !slices.Contains([]string{"create", "list", "read", "update", "delete", "rotate", "auth_failed"}, flt.Action) {
			t.Fatalf("%q: action %q", raw, flt.Action)
		}
		if flt.KeyID != strings.ToLower(q.Get("key_id")) || flt.KeyID != "" && !lowerUUID(flt.KeyID) {
			t.Fatalf("%q: key_id %q", raw, flt.KeyID)
		}
		wantLimit := DefaultLimit
		if l := q.Get("limit"); l != "" {
			digits := strings.TrimPrefix(l, "+")
			wantLimit = 0
			for i := 0; i < len(digits); i++ {
				if digits[i] < '0' || digits[i] > '9' {
					t.Fatalf("%q: accepted the limit %q, no number", raw, l)
				}
				wantLimit = min(wantLimit*10+int(digits[i]-'0'), 1<<20)
			}
		}
		if flt.Limit != wantLimit || flt.Limit < 1 || flt.Limit > MaxLimit {
			t.Fatalf("%q: limit %d, want %d", raw, flt.Limit, wantLimit)
		}
		if c := q.Get("cursor"); c == "" {
			if flt.AfterTime != nil || flt.AfterID != 0 {
				t.Fatalf("%q: a cursor without a cursor: %v %d", raw, flt.AfterTime, flt.AfterID)
			}
		} else {
			at, id, err := decodeCursor(c)
			if err != nil || flt.AfterTime == nil || !flt.AfterTime.Equal(at) || flt.AfterID != id || id < 1 {
				t.Fatalf("%q: cursor %v %d (%v)", raw, flt.AfterTime, flt.AfterID, err)
			}
			if at2, id2, err := decodeCursor(encodeCursor(*flt.AfterTime, flt.AfterID)); err != nil || !at2.Equal(at) || id2 != id {
				t.Fatalf("%q: the cursor given out again reads %v %d (%v)", raw, at2, id2, err)
			}
		}
		if fm := q.Get("format"); fm != "" && fm != "json" && fm != "csv" {
			t.Fatalf("%q: accepted format %q", raw, fm)
		}
	})
}

// filterParams are the parameters the audit log documents.
var filterParams = []string{"since", "until", "action", "key_id", "limit", "cursor", "format"}

// plainName reports whether s may be echoed: 1 to 32 letters, digits, _ . -
func plainName(s string) bool {
	if len(s) < 1 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// lowerUUID reports whether s is a UUID in lower-case hex, 8-4-4-4-12.
func lowerUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// A cursor decodes to a time in UTC, at or after 1970, and an id of at
// least 1, which encode again to a cursor of the same; one encoded from
// such values decodes to them, and one of other values is refused.
func FuzzDecodeCursor(f *testing.F) {
	for _, c := range []string{"MTc2NDMzMTIwMDAwMDAwMC40Mg", "!!!", strings.Repeat("A", 80), "bm90LWEtY3Vyc29y", "", "MC4x", "LTEuMQ", "KzEuKzE", "MDAwMS4wMDAx"} {
		f.Add(c, int64(1764331200000000), int64(42))
	}
	f.Add("", int64(0), int64(1))
	f.Add("", int64(-1), int64(1))
	f.Add("", int64(1), int64(0))
	f.Add("", int64(9223372036854775807), int64(9223372036854775807))
	f.Fuzz(func(t *testing.T, c string, micros, id int64) {
		at, n, err := decodeCursor(c)
		if err != nil {
			if !at.IsZero() || n != 0 {
				t.Fatalf("decodeCursor(%q) refused with %v, %d", c, at, n)
			}
		} else {
			if n < 1 || at.Location() != time.UTC || at.UnixMicro() < 0 || at.Nanosecond()%1000 != 0 || len(c) > 64 {
				t.Fatalf("decodeCursor(%q) = %v, %d", c, at, n)
			}
			again := encodeCursor(at, n)
			at2, n2, err := decodeCursor(again)
			if err != nil || at2 != at || n2 != n {
				t.Fatalf("decodeCursor(%q) = %v, %d encodes to %q, which reads %v, %d (%v)", c, at, n, again, at2, n2, err)
			}
		}

		at, n, err = decodeCursor(encodeCursor(time.UnixMicro(micros), id))
		if (micros >= 0 && id >= 1) != (err == nil) {
			t.Fatalf("cursor of %d, %d: %v", micros, id, err)
		}
		if err == nil && (at.UnixMicro() != micros || n != id) {
			t.Fatalf("cursor of %d, %d reads %d, %d", micros, id, at.UnixMicro(), n)
		}
	})
}
