package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
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
		{"token":"b","type":"t2"},{"token":"a","type":"other","url":"u2"},{"token":"a","url":"u1","source":"content"},
		{"token":"a","url":"u1","source":"commit"}]`))
	if err != nil || skipped != 0 {
		t.Fatal(skipped, err)
	}
	want := []report{
		{Token: "a", Type: "t1", Locations: []location{{"u1", "content"}, {"u2", ""}, {"u1", "commit"}}},
		{Token: "b", Type: "t2", Locations: []location{{}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("a repeated token must be one report in the place of its first, with each distinct place:\n got %+v\nwant %+v", got, want)
	}
	// A token repeated past maxLocations keeps that many places and
	// counts the rest.
	var many strings.Builder
	many.WriteString("[")
	for i := range maxLocations + 5 {
		fmt.Fprintf(&many, `{"token":"a","url":"u%d"},`, i)
	}
	many.WriteString(`{"token":"a","url":"u0"},{"token":"a","url":"u24"},{"token":"a","url":"u24"}]`) // repeats count once
	got, _, err = parsePayload([]byte(many.String()))
	if err != nil || len(got) != 1 || len(got[0].Locations) != maxLocations || got[0].More != 5 || got[0].Locations[maxLocations-1].URL != fmt.Sprint("u", maxLocations-1) {
		t.Fatalf("a token in %d places: %d reports, %+v, %v", maxLocations+5, len(got), got, err)
	}
	if got, _, err := parsePayload([]byte(`[]`)); err != nil || len(got) != 0 {
		t.Fatalf("an empty array: %v %v", got, err)
	}
	// Items it cannot use cost the others nothing.
	got, skipped, err = parsePayload([]byte(`[{"token":"a","source":5},null,"x",{"token":7},{"token":""},{"token":"b","url":{"u":1}}]`))
	if err != nil || skipped != 4 || !reflect.DeepEqual(got, []report{{Token: "a", Locations: []location{{}}}, {Token: "b", Locations: []location{{}}}}) {
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
			if len(r.Locations) == 0 || len(r.Locations) > maxLocations || r.More > 0 && len(r.Locations) < maxLocations {
				t.Fatalf("token with %d places and %d more", len(r.Locations), r.More)
			}
			for i, l := range r.Locations {
				if slices.Contains(r.Locations[:i], l) {
					t.Fatalf("place %+v kept twice", l)
				}
			}
		}
		// Every distinct non-empty string token of the array is kept, and
		// every item without one is counted.
		var all []json.RawMessage
		if err := json.Unmarshal(body, &all); err != nil {
			t.Fatalf("accepted %q, which is not an array: %v", body, err)
		}
		// Each report holds its token's distinct places in payload order,
		// the first maxLocations of them, and counts the rest.
		places, order, without := map[string][]location{}, []string{}, 0
		for _, item := range all {
			var o struct {
				Token *string `json:"token"`
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(item, &m) != nil || m == nil || json.Unmarshal(m["token"], &o.Token) != nil || o.Token == nil || *o.Token == "" {
				without++
				continue
			}
			var url, source string
			_ = json.Unmarshal(m["url"], &url)
			_ = json.Unmarshal(m["source"], &source)
			at := location{clean(url, 2048), clean(source, 128)}
			if _, ok := places[*o.Token]; !ok {
				order = append(order, *o.Token)
			}
			if !slices.Contains(places[*o.Token], at) {
				places[*o.Token] = append(places[*o.Token], at)
			}
		}
		if len(order) != len(reports) || without != skipped {
			t.Fatalf("%d distinct tokens, %d reports; %d items without one, %d skipped", len(order), len(reports), without, skipped)
		}
		for i, tok := range order {
			want := places[tok]
			more := max(len(want)-maxLocations, 0)
			want = want[:len(want)-more]
			if r := reports[i]; r.Token != tok || !slices.Equal(r.Locations, want) || r.More != more {
				t.Fatalf("report %d: %q with %d places and %d more; want %q with %d and %d", i, r.Token, len(r.Locations), r.More, tok, len(want), more)
			}
		}
	})
}
