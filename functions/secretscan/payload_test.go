package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestPayloadParser(t *testing.T) {
	bad := []struct{ name, body, detail string }{
		{"an object instead of an array", `{"token":"x"}`, "JSON array"},
		{"null", `null`, "JSON array"},
		{"an empty body", ``, "JSON array"},
		{"a string", `"[]"`, "JSON array"},
		{"truncated JSON", `[{"token":"x"}`, "not valid JSON"},
		{"data after the array", `[{"token":"x"}] []`, "not valid JSON"},
		{"an item that is not an object", `["gmk_acct_live_x"]`, "must be an object"},
		{"a numeric token", `[{"token":12}]`, "must be an object"},
		{"a null item", `[{"token":"x"},null]`, "item 1 has no token"},
		{"an item without a token", `[{"type":"t"}]`, "item 0 has no token"},
		{"an empty token", `[{"token":""}]`, "item 0 has no token"},
		{"a numeric url", `[{"token":"x","url":5}]`, "must be an object"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parsePayload([]byte(tc.body)); err == nil || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.detail)
			}
		})
	}
	got, err := parsePayload([]byte(` [{"token":"a","type":"t1","url":"u1","source":"content","future":{"x":1}},
		{"token":"b","type":"t2"},{"token":"a","type":"other","url":"u2"}]`))
	if err != nil {
		t.Fatal(err)
	}
	want := []report{{Token: "a", Type: "t1", URL: "u1", Source: "content"}, {Token: "b", Type: "t2"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("duplicates must be kept once, first wins, in order: %+v", got)
	}
	if got, err := parsePayload([]byte(`[]`)); err != nil || len(got) != 0 {
		t.Fatalf("an empty array: %v %v", got, err)
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(katPayload))
	f.Add([]byte(ghExamplePayload))
	f.Add([]byte(`[{"token":"a"},{"token":"a"}]`))
	f.Add([]byte(`[null]`))
	f.Add([]byte(`{"token":"a"}`))
	f.Add([]byte(`[{"token":"\u0000","url":"\ud800"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		reports, err := parsePayload(body)
		if err != nil {
			if reports != nil {
				t.Fatal("reports returned with an error")
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		seen := map[string]bool{}
		for _, r := range reports {
			if r.Token == "" || seen[r.Token] {
				t.Fatalf("empty or repeated token accepted from %q", body)
			}
			seen[r.Token] = true
		}
		// Every distinct token of the array is kept.
		var all []struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal(body, &all); err != nil {
			t.Fatalf("accepted %q, which is not an array of objects: %v", body, err)
		}
		distinct := map[string]bool{}
		for _, item := range all {
			distinct[item.Token] = true
		}
		if len(distinct) != len(reports) {
			t.Fatalf("%d distinct tokens, %d reports", len(distinct), len(reports))
		}
	})
}
