package main

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/page"
)

// TestThePageTellsAGraceKeyFromARevokedOne: a key rotated with grace
// still works until its revoked_at, so the page says until when and
// keeps its Revoke button (an admin cutting a leaked key short must not
// need the API); a key whose revoked_at has passed is revoked.
func TestThePageTellsAGraceKeyFromARevokedOne(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	later, earlier := now.Add(time.Hour), now.Add(-time.Hour)
	scope := "read"
	for _, tc := range []struct {
		name       string
		revokedAt  *time.Time
		status     string
		revoke     bool
		rotate     bool
		revokedRow bool
	}{
		{"live", nil, "active", true, true, false},
		{"in its grace", &later, "rotated, works until 2026-11-30 07:00 UTC", true, false, false},
		{"revoked", &earlier, "revoked", false, false, true},
		// An expired key works no more: neither rotated nor revoked.
		{"expired", nil, "expired 2026-11-30 05:00 UTC", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := Key{ID: "0c0c0c0c-0000-4000-8000-000000000000", Name: "ci", Kind: "account", Scope: &scope, Last4: "ab12", CreatedAt: now, RevokedAt: tc.revokedAt}
			if tc.name == "expired" {
				k.ExpiresAt = &earlier
			}
			k.Ended = endedBy(k.RevokedAt, now)
			k.Expired = !k.Ended && endedBy(k.ExpiresAt, now)
			rec := httptest.NewRecorder()
			if err := page.Render(rec, keysPage, "API keys", true, []Key{k}); err != nil {
				t.Fatal(err)
			}
			html := rec.Body.String()
			if !strings.Contains(html, "<td>"+tc.status+"</td>") {
				t.Errorf("status is not %q:\n%s", tc.status, html)
			}
			if got := strings.Contains(html, ">Revoke</button>"); got != tc.revoke {
				t.Errorf("Revoke button shown: %v, want %v", got, tc.revoke)
			}
			if got := strings.Contains(html, ">Rotate</button>"); got != tc.rotate {
				t.Errorf("Rotate button shown: %v, want %v", got, tc.rotate)
			}
			if got := strings.Contains(html, `class="revoked"`); got != tc.revokedRow {
				t.Errorf("row marked revoked: %v, want %v", got, tc.revokedRow)
			}
		})
	}
}

// The page's times are UTC and say so, whatever zone the database driver
// hands them in: an expiry in a zone ten hours ahead is shown on its UTC
// date.
func TestThePageShowsTimesInUTC(t *testing.T) {
	t.Parallel()
	east := time.FixedZone("AEST", 10*3600)
	created := time.Date(2026, 11, 30, 9, 30, 0, 0, east)
	expires := time.Date(2026, 12, 1, 2, 0, 0, 0, east)
	scope := "read"
	k := Key{ID: "0c0c0c0c-0000-4000-8000-000000000000", Name: "ci", Kind: "account", Scope: &scope, Last4: "ab12", CreatedAt: created, LastUsedAt: &created, ExpiresAt: &expires}
	rec := httptest.NewRecorder()
	if err := page.Render(rec, keysPage, "API keys", true, []Key{k}); err != nil {
		t.Fatal(err)
	}
	html := rec.Body.String()
	for _, want := range []string{"<td>2026-11-29 23:30 UTC</td><td>2026-11-29 23:30 UTC</td>", "<td>expires 2026-11-30 16:00 UTC</td>"} {
		if !strings.Contains(html, want) {
			t.Errorf("no %q in:\n%s", want, html)
		}
	}
}
