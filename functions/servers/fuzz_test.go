package main

import (
	"bytes"
	"encoding/json"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// ParseEnrollment accepts exactly the bodies the API documents, checked
// here by rules of the test's own: an object whose hostname (and
// machine_id and name, when not absent or null) is a string of 1 to the
// limit characters after trimming, without control characters, and whose
// tags are an array of at most 32 such strings of up to 64. A refusal
// names the first member that breaks them. What it accepts holds the
// body's values, trimmed, and reads back the same when sent again.
func FuzzParseEnrollment(f *testing.F) {
	for _, s := range []string{
		`{"hostname":" web1 "}`,
		`{"hostname":"h","machine_id":null,"name":null,"tags":null}`,
		`{"hostname":"h","machine_id":"m","name":"N","tags":["a","b"],"extra":1}`,
		`{"hostname":"` + strings.Repeat("é", 253) + `"}`,
		`{}`, `{"hostname":"h","name":""}`, `{"hostname":"h","tags":["a\tb"]}`, `"h"`,
		`{ "tags":["x"], "hostname":"h" }`, `{"hostname":"h","hostname":" i"}`,
		`{"name":"x"}`, `{"hostname":42}`, `{"hostname":"a\u0000b"}`, `{"hostname":"h","machine_id":["x"]}`,
		`{"hostname":"h","tags":"prod"}`, `{"hostname":"h","tags":["a",1]}`, `{"hostname":"h","tags":[""]}`,
		`["h"]`, `hostname=h`, `{"hostname":"h"} x`, `{"hostname":"h","n":1e400}`,
		"\f{}", "\u00a0{\"hostname\":\"h\"}", // not JSON's whitespace
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		e, fe := ParseEnrollment(body)
		field, want := enrollmentOf(body)
		if fe != nil {
			if field == "ok" || fe.Field != field {
				t.Fatalf("%q refused naming %q (%v), want %q", body, fe.Field, fe, field)
			}
			return
		}
		if field != "ok" {
			t.Fatalf("%q accepted as %+v, want a refusal naming %q", body, e, field)
		}
		if e.Hostname != want.Hostname || e.MachineID != want.MachineID || e.Name != want.Name ||
			e.Tags == nil || !slices.Equal(e.Tags, want.Tags) {
			t.Fatalf("%q read as %+v, want %+v", body, e, want)
		}
		// Sent again (name left out when it is the default), it is the
		// same enrollment, the same request to Idempotency-Key.
		again := map[string]any{"hostname": e.Hostname, "tags": e.Tags}
		if e.MachineID != "" {
			again["machine_id"] = e.MachineID
		}
		if e.Name != defaultName(e.Hostname) {
			again["name"] = e.Name
		}
		b, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		back, fe := ParseEnrollment(b)
		if fe != nil || back.Hostname != e.Hostname || back.MachineID != e.MachineID || back.Name != e.Name ||
			!slices.Equal(back.Tags, e.Tags) || !bytes.Equal(back.Hash(), e.Hash()) {
			t.Fatalf("%s sent again reads %+v (%v), want %+v", b, back, fe, e)
		}
	})
}

// enrollmentOf reads body by the documented rules: field is "ok" and want
// the enrollment, or the member to name in the refusal ("" for the body).
func enrollmentOf(body []byte) (field string, want Enrollment) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if dec.Decode(&doc) != nil {
		return "", want
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", want
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return "", want
	}
	str := func(name string, limit int) (string, bool, bool) { // value, present, valid
		v, present := m[name]
		if !present || v == nil {
			return "", false, true
		}
		s, isString := v.(string)
		s = strings.TrimSpace(s)
		return s, true, isString && fits(s, limit)
	}
	var present, valid bool
	if want.Hostname, present, valid = str("hostname", 253); !present || !valid {
		return "hostname", Enrollment{}
	}
	if want.MachineID, _, valid = str("machine_id", 128); !valid {
		return "machine_id", Enrollment{}
	}
	if want.Name, present, valid = str("name", 200); !valid {
		return "name", Enrollment{}
	} else if !present {
		want.Name = defaultName(want.Hostname)
	}
	want.Tags = []string{}
	if v := m["tags"]; v != nil {
		list, isList := v.([]any)
		if !isList || len(list) > 32 {
			return "tags", Enrollment{}
		}
		for _, tag := range list {
			s, isString := tag.(string)
			s = strings.TrimSpace(s)
			if !isString || !fits(s, 64) {
				return "tags", Enrollment{}
			}
			want.Tags = append(want.Tags, s)
		}
	}
	return "ok", want
}

// fits reports whether s is 1 to limit characters, none of them a control
// character.
func fits(s string, limit int) bool {
	n := 0
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
		n++
	}
	return n >= 1 && n <= limit && utf8.ValidString(s)
}

// defaultName is the name of an enrollment that sent none: its hostname,
// cut to 200 characters.
func defaultName(hostname string) string {
	r := []rune(hostname)
	return string(r[:min(len(r), 200)])
}

// IdempotencyKey takes exactly an absent header or 1 to 255 visible ASCII
// characters, and hands the key on as sent.
func FuzzIdempotencyKey(f *testing.F) {
	f.Add("")
	f.Add("enrol-2f1c")
	f.Add("a b")
	f.Add(strings.Repeat("k", 256))
	f.Add("caf\u00e9")
	f.Fuzz(func(t *testing.T, v string) {
		got, fe := IdempotencyKey(v)
		ok := v == "" || regexp.MustCompile(`^[\x21-\x7e]{1,255}$`).MatchString(v)
		if (fe == nil) != ok || (fe == nil && got != v) || (fe != nil && (got != "" || fe.Field != "Idempotency-Key")) {
			t.Fatalf("%q: %q, %v; want accepted %v", v, got, fe, ok)
		}
	})
}
