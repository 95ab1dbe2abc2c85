package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/glassmkr/guardian/shared/testenv/browser"
)

// local is the site's address as a browser should use it: the cookie is
// Secure, which Chromium honours over plain HTTP for localhost.
func (s *site) local() string { return strings.Replace(s.URL, "127.0.0.1", "localhost", 1) }

func TestCreateKeyInTheBrowserAnswersThePasswordPromptAndReplays(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := browser.Chromium(t)
	base := s.local()

	// Signed out, the page sends the browser to sign in.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/settings/keys"), chromedp.WaitVisible("#sign-in")); err != nil {
		t.Fatalf("sign-in page: %v", err)
	}
	err := chromedp.Do(ctx,
		chromedp.SendKeys(`input[name="email"]`, s.email(t)),
		chromedp.SendKeys(`input[name="password"]`, pw),
		chromedp.Click("#sign-in"),
		chromedp.WaitVisible("#create-key"),
	)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	// Let the password confirmation of the sign-in age past five minutes.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '10 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(`input[name="name"]`, "from-the-browser"),
		chromedp.Click("#create-key"),
		chromedp.WaitVisible("#reauth"),
		chromedp.SendKeys(`#reauth input[name="password"]`, pw),
		chromedp.Click(`#reauth button[type="submit"]`),
		chromedp.WaitVisible("#new-key"),
	)
	if err != nil {
		t.Fatalf("create key with the password prompt: %v", err)
	}
	key, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("new-key").textContent`))
	if err != nil {
		t.Fatal(err)
	}
	key = strings.TrimSpace(key)
	if !strings.HasPrefix(key, "gmk_acct_live_") || !s.works(t, key) {
		t.Fatalf("the key shown (%q) does not work", key)
	}
	// Shown once: the page lists it by its last 4 only from now on.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/settings/keys"), chromedp.WaitVisible("#create-key")); err != nil {
		t.Fatal(err)
	}
	html, err := chromedp.Run(ctx, chromedp.OuterHTML("html"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(html, key) || !strings.Contains(html, key[len(key)-4:]) || !strings.Contains(html, "from-the-browser") {
		t.Fatal("after a reload the key must be listed by name and last 4 only")
	}
}

func TestCrossSitePostWithTheCookieIsRefusedInTheBrowser(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := browser.Chromium(t)
	base := s.local()
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.SendKeys(`input[name="email"]`, s.email(t)),
		chromedp.SendKeys(`input[name="password"]`, pw),
		chromedp.Click("#sign-in"),
		chromedp.WaitVisible("#create-key"),
	)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	// Another site on this machine (another port: same site, other origin)
	// makes the browser post the sign-out form with the session cookie.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<form id="f" method="post" action="%s/auth/logout"></form><script>document.getElementById("f").submit()</script>`, base)
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
	if err := chromedp.Do(ctx, chromedp.Navigate(evilURL)); err != nil {
		t.Fatal(err)
	}
	var body string
	deadline := time.Now().Add(20 * time.Second)
	// The refusal is a page (the browser submitted a form), saying why.
	for !strings.Contains(body, "cross-site requests may not change state") {
		if time.Now().After(deadline) {
			t.Fatalf("the cross-site POST was not refused; page: %.300s", body)
		}
		time.Sleep(100 * time.Millisecond)
		body, _ = chromedp.Run(ctx, chromedp.Text("body"))
	}
	// The session survived: the dashboard still opens.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/settings/keys"), chromedp.WaitVisible("#create-key")); err != nil {
		t.Fatalf("session ended by a cross-site request: %v", err)
	}
}
