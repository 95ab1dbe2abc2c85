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
		{"only an item that is not an object", `["gmk_acct_live_x"]`, "none of the 1 items"},
		{"only a numeric token", `[{"token":12}]`, "none of the 1 items"},
		{"only items without tokens", `[{"type":"t"},{"token":""},null]`, "none of the 3 items"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := parsePayload([]byte(tc.body)); err == nil || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.detail)
			}
		})
	}
	got, skipped, err := parsePayload([]byte(` [{"token":"a","type":"t1","url":"u1","source":"content","future":{"x":1}},
		{"token":"b","type":"t2"},{"token":"a","type":"other","url":"u2"}]`))
	if err != nil || skipped != 0 {
		t.Fatal(skipped, err)
	}
	want := []report{{Token: "a", Type: "t1", URL: "u1", Source: "content"}, {Token: "b", Type: "t2"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("duplicates must be kept once, first wins, in order: %+v", got)
	}
	if got, _, err := parsePayload([]byte(`[]`)); err != nil || len(got) != 0 {
		t.Fatalf("an empty array: %v %v", got, err)
	}
	// Items it cannot use cost the others nothing.
	got, skipped, err = parsePayload([]byte(`[{"token":"a","source":5},null,"x",{"token":7},{"token":""},{"token":"b","url":{"u":1}}]`))
	if err != nil || skipped != 4 || len(got) != 2 || got[0] != (report{Token: "a"}) || got[1] != (report{Token: "b"}) {
		t.Fatalf("mixed items: %+v, %d skipped, %v", got, skipped, err)
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
		reports, skipped, err := parsePayload(body)
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
		// Every distinct non-empty string token of the array is kept, and
		// every item without one is counted.
		var all []json.RawMessage
		if err := json.Unmarshal(body, &all); err != nil {
			t.Fatalf("accepted %q, which is not an array: %v", body, err)
		}
		distinct, without := map[string]bool{}, 0
		for _, item := range all {
			var o struct {
				Token *string `json:"token"`
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(item, &m) != nil || m == nil || json.Unmarshal(m["token"], &o.Token) != nil || o.Token == nil || *o.Token == "" {
				without++
				continue
			}
			distinct[*o.Token] = true
		}
		if len(distinct) != len(reports) || without != skipped {
			t.Fatalf("%d distinct tokens, %d reports; %d items without one, %d skipped", len(distinct), len(reports), without, skipped)
		}
	})
}
