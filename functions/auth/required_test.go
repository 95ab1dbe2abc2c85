package main

import (
	"context"
	"testing"

	"github.com/glassmkr/guardian/shared/problem"
)

// A password field that is missing, empty or misspelled is a bad request
// naming the field, refused before any bcrypt comparison: not a wrong
// password, and no auth_failed row.
func TestPasswordFieldsAreRequired(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	if a.cookie == nil {
		t.Fatalf("login: %d %v", a.status, a.doc)
	}
	cookie := map[string]string{"Cookie": "guardian_token=" + a.cookie.Value}
	form := map[string]string{"Cookie": cookie["Cookie"], "Content-Type": "application/x-www-form-urlencoded"}
	for _, tc := range []struct {
		name, path, body, field string
		header                  map[string]string
	}{
		{"sign-in without a password", "/auth/login", `{"email":"` + s.email + `"}`, "password", nil},
		{"sign-in with a blank e-mail", "/auth/login", `{"email":"  ","password":"x"}`, "email", nil},
		{"re-auth without a password", "/auth/reauth", `{}`, "password", cookie},
		{"re-auth with a misspelled password", "/auth/reauth", `{"pasword":"` + goodPassword + `"}`, "password", cookie},
		{"re-auth with an empty password", "/auth/reauth", `{"password":""}`, "password", cookie},
		{"re-auth by a form without a password", "/auth/reauth", "pasword=x", "password", form},
		{"change without the new password", "/auth/password", `{"current_password":"` + goodPassword + `"}`, "new_password", cookie},
		{"change without the current password", "/auth/password", `{"new_password":"another-good-one-7"}`, "current_password", cookie},
		{"change with a misspelled current password", "/auth/password", `{"curent_password":"` + goodPassword + `","new_password":"another-good-one-7"}`, "current_password", cookie},
	} {
		a := s.post(t, tc.path, tc.body, tc.header)
		if a.status != 400 || a.doc["code"] != "invalid_request" || a.doc["field"] != tc.field {
			t.Errorf("%s: %d %v, want 400 invalid_request naming %s", tc.name, a.status, a.doc, tc.field)
		}
	}
	var failed int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE customer_id = $1 AND action = 'auth_failed'", s.c.ID).Scan(&failed); err != nil || failed != 0 {
		t.Errorf("auth_failed rows: %d (%v), want none", failed, err)
	}
	// A wrong password is still one (a 401, so with a challenge: RFC
	// 9110), and the password is unchanged.
	if a := s.post(t, "/auth/reauth", `{"password":"wrong-wrong-wrong"}`, cookie); a.status != 401 || a.doc["code"] != "invalid_credentials" || a.header.Get("WWW-Authenticate") != problem.Challenge {
		t.Errorf("a wrong password: %d %v, WWW-Authenticate %q", a.status, a.doc, a.header.Get("WWW-Authenticate"))
	}
	if a := s.post(t, "/auth/login", login(s.email, goodPassword), nil); a.status != 204 {
		t.Errorf("the password changed: sign-in %d %v", a.status, a.doc)
	}
}
