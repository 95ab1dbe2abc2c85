package main

import (
	"context"
	"testing"
)

// Caddy routes DELETE //api/v1/keys/{id} as the clean path (audit row,
// limits, the admin scope) and hands the function the path as sent: the
// function refuses it (shared/fnserve) instead of redirecting, so the key
// lives on and its audit row records a refusal, not a successful delete.
func TestANonCanonicalPathIsRefusedAndAuditedAsSuch(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	admin, victim := s.c.AccountKey(t, "admin"), s.c.AccountKey(t, "write")
	var victimID string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT id FROM api_keys WHERE last4 = $1", victim[len(victim)-4:]).Scan(&victimID); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"//api/v1/keys/" + victimID, "/api/v1/./keys/" + victimID, "/api/v1/x/../keys/" + victimID} {
		a := s.Do(t, "DELETE", path, "", bearer(admin))
		if a.Status != 404 || a.Doc["code"] != "not_found" || a.Header.Get("Location") != "" {
			t.Errorf("DELETE %s: %d %v %v", path, a.Status, a.Header, a.Raw)
		}
		var result string
		var status int
		if err := s.pg.Owner.QueryRow(context.Background(), "SELECT result, status_code FROM api_audit_log WHERE path = $1 AND method = 'DELETE'", path).Scan(&result, &status); err != nil {
			t.Errorf("DELETE %s: audit row: %v", path, err)
		} else if result != "error" || status != 404 {
			t.Errorf("DELETE %s: audited as %s %d", path, result, status)
		}
	}
	if !s.works(t, victim) {
		t.Fatal("a non-canonical DELETE revoked the key")
	}
}
