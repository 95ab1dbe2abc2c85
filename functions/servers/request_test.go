package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseEnrollment(t *testing.T) {
	cases := []struct {
		name, body, field string
		want              Enrollment
	}{
		{"name defaults to the hostname", `{"hostname":" web1 "}`, "", Enrollment{Hostname: "web1", Name: "web1", Tags: []string{}}},
		{"null members are absent", `{"hostname":"h","machine_id":null,"name":null,"tags":null}`, "", Enrollment{Hostname: "h", Name: "h", Tags: []string{}}},
		{"every member", `{"hostname":"h","machine_id":"m","name":"N","tags":["a","b"],"extra":1}`, "", Enrollment{Hostname: "h", MachineID: "m", Name: "N", Tags: []string{"a", "b"}}},
		{"a long hostname is cut for the default name", `{"hostname":"` + strings.Repeat("h", 253) + `"}`, "", Enrollment{Hostname: strings.Repeat("h", 253), Name: strings.Repeat("h", 200), Tags: []string{}}},
		{"hostname counts characters, not bytes", `{"hostname":"` + strings.Repeat("é", 253) + `"}`, "", Enrollment{Hostname: strings.Repeat("é", 253), Name: strings.Repeat("é", 200), Tags: []string{}}},
		{"a missing hostname names hostname", `{}`, "hostname", Enrollment{}},
		{"an empty name names name", `{"hostname":"h","name":""}`, "name", Enrollment{}},
		{"a tab in a tag names tags", `{"hostname":"h","tags":["a\tb"]}`, "tags", Enrollment{}},
		{"not an object names nothing", `"h"`, "", Enrollment{}},
	}
	for _, tc := range cases {
		got, fe := ParseEnrollment([]byte(tc.body))
		switch {
		case tc.field == "" && tc.want.Hostname == "":
			if fe == nil || fe.Field != "" {
				t.Errorf("%s: %v", tc.name, fe)
			}
		case tc.field != "":
			if fe == nil || fe.Field != tc.field {
				t.Errorf("%s: %v", tc.name, fe)
			}
		case fe != nil:
			t.Errorf("%s: %v", tc.name, fe)
		case got.Hostname != tc.want.Hostname || got.MachineID != tc.want.MachineID || got.Name != tc.want.Name ||
			strings.Join(got.Tags, ",") != strings.Join(tc.want.Tags, ",") || got.Tags == nil:
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

func TestHashIsCanonical(t *testing.T) {
	parse := func(s string) Enrollment {
		e, fe := ParseEnrollment([]byte(s))
		if fe != nil {
			t.Fatal(fe)
		}
		return e
	}
	a := parse(`{"hostname":"h","tags":["x"]}`)
	same := []string{`{ "tags":["x"], "hostname":"h" }`, `{"hostname":" h","name":"h","tags":["x"],"machine_id":null}`}
	for _, s := range same {
		if !bytes.Equal(a.Hash(), parse(s).Hash()) {
			t.Errorf("%s hashes differently", s)
		}
	}
	differ := []string{`{"hostname":"h","tags":[]}`, `{"hostname":"h","tags":["x"],"machine_id":"m"}`, `{"hostname":"h","tags":["x"],"name":"n"}`}
	for _, s := range differ {
		if bytes.Equal(a.Hash(), parse(s).Hash()) {
			t.Errorf("%s hashes the same", s)
		}
	}
}

func TestIngestURL(t *testing.T) {
	for base, want := range map[string]string{
		"http://localhost:8080":             "http://localhost:8080/api/v1/ingest",
		"https://guardian.example.com/":     "https://guardian.example.com/api/v1/ingest",
		"https://example.com/guardian":      "https://example.com/guardian/api/v1/ingest",
		"ftp://example.com":                 "",
		"/relative":                         "",
		"https://example.com/?q=1":          "",
		"guardian.example.com":              "",
		"https://guardian.example.com#frag": "",
	} {
		got, err := IngestURL(base)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("%s: %q %v", base, got, err)
		}
	}
}
