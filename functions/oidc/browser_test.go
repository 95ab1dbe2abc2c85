package main

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/glassmkr/guardian/functions/oidc/oidctest"
	chromium "github.com/glassmkr/guardian/shared/testenv/browser"
)

// An account made by Google sign-in has no password to answer the prompt
// of a sensitive action with: in Chromium, the prompt offers to confirm
// with Google, the browser leaves for the provider and comes back to the
// page, and the action (here a new key) is then done by itself, as a
// password's confirmation would have it.
func TestAGoogleAccountsActionIsDoneAfterConfirmingWithGoogle(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{localhost: true})
	cat := oidctest.User{Subject: "cat-sub", Email: "cat@example.com", EmailVerified: true, Name: "Cat"}
	ctx := chromium.Chromium(t)

	s.idp.QueueUser(cat)
	if err := chromedp.Do(ctx,
		chromedp.Navigate(s.URL+"/login"),
		chromedp.Click("#google"),
		chromedp.WaitVisible("#create-key"),
	); err != nil {
		t.Fatalf("signing up with Google: %v", err)
	}
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '1 hour'"); err != nil {
		t.Fatal(err)
	}
	s.idp.QueueUser(cat)
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(`input[name="name"]`, "after-google"),
		chromedp.Click("#create-key"),
		chromedp.WaitVisible("#reauth"),
		// The prompt asks for a password; the account has none.
		chromedp.SendKeys(`#reauth input[name="password"]`, "not a password"),
		chromedp.Click(`#reauth button[type="submit"]`),
		chromedp.WaitVisible(`#reauth [data-google] a`),
		chromedp.Click(`#reauth [data-google] a`),
		chromedp.WaitVisible("#new-key"),
	); err != nil {
		t.Fatalf("creating a key, confirmed with Google: %v", err)
	}
	if got := s.idp.LastAuthorization().Get("max_age"); got != "0" {
		t.Fatalf("the provider was not asked to authenticate anew: max_age %q", got)
	}
	key, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("new-key").textContent`))
	if err != nil {
		t.Fatal(err)
	}
	key = strings.TrimSpace(key)
	var name string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT name FROM api_keys WHERE last4 = $1 AND revoked_at IS NULL", key[len(key)-4:]).Scan(&name); err != nil || name != "after-google" {
		t.Fatalf("the key shown (%q) is not the one asked for: %q %v", key, name, err)
	}
	// Once: loading the page again sends nothing more.
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible("#create-key")); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_keys WHERE name = 'after-google'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d keys named after-google after a reload, want 1 (%v)", n, err)
	}
	// A kept call is sent only on a confirmation's way back: a page that
	// loads without the mark (a sign-in, a refused confirmation's page)
	// drops it, although the session is confirmed now.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(sessionStorage.setItem("guardian.replay", JSON.stringify({method: "POST",
		url: "/api/v1/keys", body: {name: "never-asked", scope: "read"}, page: "/settings/keys", at: Date.now()})), true)`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(s.URL+"/settings/keys"),
		chromedp.WaitVisible("#create-key"),
	); err != nil {
		t.Fatal(err)
	}
	kept, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`sessionStorage.getItem("guardian.replay") !== null`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_keys WHERE name = 'never-asked'").Scan(&n); err != nil || n != 0 || kept {
		t.Fatalf("a page load without the mark: %d keys made from the kept call (want 0), still kept %v (%v)", n, kept, err)
	}
}
