package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/problem"
)

// post is a request to path with body and, unless "", Content-Type ctype.
func post(path, ctype string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	if ctype != "" {
		r.Header["Content-Type"] = []string{ctype}
	}
	return r
}

// isProblem reports whether p is the problem of status and code.
func isProblem(p *problem.Problem, status int, code string) bool {
	return p != nil && p.Status == status && p.Code == code
}

// Bodies of the sign-in and password routes, from TestBadBodies and the
// forms the pages post. No oversized one: the fuzzer would spend its time
// minimising its mutants; TestBadBodies sends one.
var fieldSeeds = []struct {
	ctype, body string
}{
	{"application/json", `{"email":"a@b.c","password":"correct-horse-staple-9"}`},
	{"", `{"email":"a@b.c"}`},
	{"application/json", "email=x"},
	{"application/json", `{"email":"a@b.c","password":12}`},
	{"application/json; charset=utf-8", `{"email":"a@b.c","email":"d@e.f"}`},
	{"application/json", `null`},
	{"application/xml", "<login/>"},
	{"application/x-www-form-urlencoded", "email=a%40b.c&password=correct-horse-staple-9"},
	{"application/x-www-form-urlencoded", "email=a&email=b&x=%zz"},
	{"application/x-www-form-urlencoded; charset=utf-8", "a;b=c"},
}

// fields hands on exactly the members of the body it was sent, as
// strings, or refuses it with the problem the routes document: 413 past
// 8 KiB, 415 for other media types, 400 for what does not read. What it
// accepts reads back the same when sent again.
func FuzzFields(f *testing.F) {
	for _, s := range fieldSeeds {
		f.Add(s.ctype, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		got, form, p := fields(httptest.NewRecorder(), post("/auth/login", ctype, body))
		if p != nil && got != nil {
			t.Fatalf("fields returned %v with the problem %+v", got, p)
		}
		mt, _, _ := mime.ParseMediaType(ctype)
		isForm := mt == "application/x-www-form-urlencoded"
		switch {
		case len(body) > maxBody:
			if !isProblem(p, 413, "payload_too_large") || form {
				t.Fatalf("a body of %d bytes: %+v, form %v", len(body), p, form)
			}
		case isForm:
			want, err := url.ParseQuery(string(body))
			if err != nil {
				if !isProblem(p, 400, "invalid_request") || !form {
					t.Fatalf("unreadable form %q: %+v, form %v", body, p, form)
				}
				return
			}
			if p != nil || !form || len(got) != len(want) {
				t.Fatalf("form %q: %v, %+v, form %v", body, got, p, form)
			}
			for k, v := range want {
				if got[k] != v[0] {
					t.Fatalf("form %q: %s is %q, want the first value %q", body, k, got[k], v[0])
				}
			}
			again := url.Values{}
			for k, v := range got {
				again.Set(k, v)
			}
			// (Escaping may take the body past the limit: then it is not sent.)
			if back, form, p := fields(httptest.NewRecorder(), post("/auth/login", ctype, []byte(again.Encode()))); len(again.Encode()) <= maxBody && (p != nil || !form || !maps.Equal(back, got)) {
				t.Fatalf("form %q sent again reads %v (%+v)", again.Encode(), back, p)
			}
		case mt == "application/json" || mt == "":
			if form {
				t.Fatalf("a JSON body read as a form: %q", body)
			}
			var members map[string]json.RawMessage
			if json.Unmarshal(body, &members) != nil {
				if !isProblem(p, 400, "invalid_request") || p.Detail != "the body must be a JSON object" {
					t.Fatalf("not a JSON object %q: %v, %+v", body, got, p)
				}
				return
			}
			strs := map[string]string{}
			var notString []string
			for k, raw := range members {
				var s string
				if json.Unmarshal(raw, &s) != nil || bytes.Equal(raw, []byte("null")) {
					notString = append(notString, k)
					continue
				}
				strs[k] = s
			}
			if len(notString) > 0 {
				if !isProblem(p, 400, "invalid_request") {
					t.Fatalf("%q has members %q that are not strings: %v, %+v", body, notString, got, p)
				}
				k, ok := strings.CutSuffix(p.Detail, " must be a string")
				if !ok || !slices.Contains(notString, k) {
					t.Fatalf("%q: detail %q names no member that is not a string (%q)", body, p.Detail, notString)
				}
				if p.Extra["field"] != k {
					t.Fatalf("%q: field member %v, want %q as the detail says", body, p.Extra["field"], k)
				}
				return
			}
			if p != nil || !maps.Equal(got, strs) {
				t.Fatalf("JSON %q: %v (%+v), want %v", body, got, p, strs)
			}
			again, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			if back, _, p := fields(httptest.NewRecorder(), post("/auth/login", ctype, again)); len(again) <= maxBody && (p != nil || !maps.Equal(back, got)) {
				t.Fatalf("JSON %s sent again reads %v (%+v)", again, back, p)
			}
		default:
			if !isProblem(p, 415, "unsupported_media_type") || form {
				t.Fatalf("media type %q: %v, %+v, form %v", ctype, got, p, form)
			}
		}
	})
}

// Second-factor bodies, from TestSecondStepRefusesBadRequests and the
// form the second-factor page posts.
var proofSeeds = []struct {
	ctype, body string
}{
	{"", `{"mfa_token":"` + strings.Repeat("A", 43) + `","code":"123456"}`},
	{"application/json", `{"code":"123456"}`},
	{"application/json", `{"mfa_token":"t"}`},
	{"application/json", `{"mfa_token":"t","otp":"123456"}`},
	{"application/json", `{"mfa_token":"t","credential":"x"}`},
	{"application/json", `{"mfa_token":"t","credential":{"id":"k","response":{}}}`},
	{"application/json", `{"mfa_token":"t","credential":null}`},
	{"application/json", `{"MFA_Token":"t","Code":"1","code":null}`},
	{"application/json", `  `},
	{"application/json", `null`},
	{"application/json", `{"code":"1"} {"code":"2"}`},
	{"application/x-www-form-urlencoded", "code=123456&mfa_token=t"},
	{"application/x-www-form-urlencoded", "code=%zz"},
	{"text/plain", "code=1"},
}

// readProof hands on exactly the token, code and credential of the body
// it was sent, or refuses it with the problem the routes document (413
// past 16 KiB, 415 for other media types, 400 for what does not read). A
// credential is never the JSON null, and what it accepts reads back the
// same when sent again.
func FuzzReadProof(f *testing.F) {
	for _, s := range proofSeeds {
		f.Add(s.ctype, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		in, form, p := readProof(httptest.NewRecorder(), post("/auth/login/mfa", ctype, body))
		mt, _, _ := mime.ParseMediaType(ctype)
		isForm := mt == "application/x-www-form-urlencoded"
		switch {
		case len(body) > maxProofBody:
			if !isProblem(p, 413, "payload_too_large") || form {
				t.Fatalf("a body of %d bytes: %+v, form %v", len(body), p, form)
			}
		case isForm:
			v, err := url.ParseQuery(string(body))
			if err != nil {
				if !isProblem(p, 400, "invalid_request") || !form {
					t.Fatalf("unreadable form %q: %+v, form %v", body, p, form)
				}
				return
			}
			if p != nil || !form || in.Token != v.Get("mfa_token") || in.Code != v.Get("code") || in.Credential != nil {
				t.Fatalf("form %q: %+v, %+v, form %v", body, in, p, form)
			}
			again := url.Values{"mfa_token": {in.Token}, "code": {in.Code}}.Encode()
			if back, _, p := readProof(httptest.NewRecorder(), post("/auth/login/mfa", ctype, []byte(again))); len(again) <= maxProofBody && (p != nil || !sameProof(back, in)) {
				t.Fatalf("form %q sent again reads %+v (%+v), want %+v", again, back, p, in)
			}
		case mt == "application/json" || mt == "":
			if form {
				t.Fatalf("a JSON body read as a form: %q", body)
			}
			if p != nil {
				if !isProblem(p, 400, "invalid_request") {
					t.Fatalf("JSON %q: %+v", body, p)
				}
				if want, ok := proofOf(body); ok {
					t.Fatalf("JSON %q refused (%s), want %+v", body, p.Detail, want)
				}
				return
			}
			if string(in.Credential) == "null" {
				t.Fatalf("JSON %q: the credential is the JSON null", body)
			}
			if in.Credential != nil && !json.Valid(in.Credential) {
				t.Fatalf("JSON %q: the credential %q is not JSON", body, in.Credential)
			}
			if want, ok := proofOf(body); !ok || !sameProof(in, want) {
				t.Fatalf("JSON %q read as %+v, want %+v (%v)", body, in, want, ok)
			}
			again, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			if back, _, p := readProof(httptest.NewRecorder(), post("/auth/login/mfa", ctype, again)); len(again) <= maxProofBody && (p != nil || !sameProof(back, in)) {
				t.Fatalf("JSON %s sent again reads %+v (%+v), want %+v", again, back, p, in)
			}
		default:
			if !isProblem(p, 415, "unsupported_media_type") || form {
				t.Fatalf("media type %q: %+v, form %v", ctype, p, form)
			}
		}
	})
}

func sameProof(a, b proofInput) bool {
	if a.Token != b.Token || a.Code != b.Code || (a.Credential == nil) != (b.Credential == nil) {
		return false
	}
	if a.Credential == nil {
		return true
	}
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a.Credential) == nil && json.Compact(&cb, b.Credential) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

// proofOf is what a JSON second-factor body holds, read independently of
// readProof: ok is false when it must be refused (its first value is not
// an object or null, a member is unknown, or mfa_token or code is not a
// string). Members are taken in order, so a later one named again (in
// any case) wins, as in encoding/json.
func proofOf(body []byte) (proofInput, bool) {
	var in proofInput
	if len(bytes.TrimSpace(body)) == 0 {
		return in, true
	}
	var first json.RawMessage
	if json.NewDecoder(bytes.NewReader(body)).Decode(&first) != nil {
		return in, false
	}
	if string(first) == "null" {
		return in, true
	}
	dec := json.NewDecoder(bytes.NewReader(first))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return in, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return in, false
		}
		var raw json.RawMessage
		if dec.Decode(&raw) != nil {
			return in, false
		}
		k, _ := tok.(string)
		switch {
		case strings.EqualFold(k, "credential"):
			in.Credential = raw
		case strings.EqualFold(k, "mfa_token"), strings.EqualFold(k, "code"):
			var s *string
			if json.Unmarshal(raw, &s) != nil {
				return in, false
			}
			if s != nil && strings.EqualFold(k, "code") {
				in.Code = *s
			} else if s != nil {
				in.Token = *s
			}
		default:
			return in, false
		}
	}
	if string(in.Credential) == "null" {
		in.Credential = nil
	}
	return in, true
}
