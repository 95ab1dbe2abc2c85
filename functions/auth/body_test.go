package main

import (
	"bytes"
	"errors"
	"io"
	"net/http/httptest"
	"testing"
	"testing/iotest"
)

// A body that stops before its end (a client gone, a reset) is 400, not
// 413: only one past the bound is too large.
func TestABodyThatDoesNotReadIs400(t *testing.T) {
	broken := func() io.ReadCloser {
		return io.NopCloser(io.MultiReader(bytes.NewReader([]byte(`{"email":`)), iotest.ErrReader(errors.New("connection reset"))))
	}
	r := post("/auth/login", "application/json", nil)
	r.Body = broken()
	if _, _, p := fields(httptest.NewRecorder(), r); !isProblem(p, 400, "invalid_request") {
		t.Errorf("fields: %+v", p)
	}
	r = post("/auth/login/mfa", "application/json", nil)
	r.Body = broken()
	if _, _, p := readProof(httptest.NewRecorder(), r); !isProblem(p, 400, "invalid_request") {
		t.Errorf("readProof: %+v", p)
	}
	if _, _, p := fields(httptest.NewRecorder(), post("/auth/login", "application/json", make([]byte, maxBody+1))); !isProblem(p, 413, "payload_too_large") {
		t.Errorf("fields past the bound: %+v", p)
	}
	if _, _, p := readProof(httptest.NewRecorder(), post("/auth/login/mfa", "application/json", make([]byte, maxProofBody+1))); !isProblem(p, 413, "payload_too_large") {
		t.Errorf("readProof past the bound: %+v", p)
	}
}

// A second-factor body refused for one member names it in the problem's
// field member, as docs/api.md promises of every 400 invalid_request.
func TestAProofRefusedForAMemberNamesIt(t *testing.T) {
	for _, tc := range []struct{ body, field string }{
		{`{"mfa_token":"t","code":"123456","remember":true}`, "remember"},
		{`{"mfa_token":"t","code":123456}`, "code"},
		{`{"mfa_token":["t"]}`, "mfa_token"},
		{`{"mfa_token":"t",`, ""},
	} {
		_, _, p := readProof(httptest.NewRecorder(), post("/auth/login/mfa", "application/json", []byte(tc.body)))
		if !isProblem(p, 400, "invalid_request") || (tc.field == "") != (p.Extra == nil) || (tc.field != "" && p.Extra["field"] != tc.field) {
			t.Errorf("%s: %+v, want field %q", tc.body, p, tc.field)
		}
	}
}
