package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"

	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/testenv/browser"
)

// virtualKey gives the browser's tab a security key (the DevTools WebAuthn
// domain): CTAP2 over USB, user presence and verification succeed at once.
func virtualKey(t *testing.T, ctx context.Context) webauthn.AuthenticatorID {
	t.Helper()
	if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		t.Fatalf("WebAuthn domain: %v", err)
	}
	res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{Options: &webauthn.VirtualAuthenticatorOptions{
		Protocol:                    webauthn.AuthenticatorProtocolCtap2,
		Transport:                   webauthn.AuthenticatorTransportUsb,
		HasResidentKey:              true,
		HasUserVerification:         true,
		IsUserVerified:              true,
		AutomaticPresenceSimulation: true,
	}})
	if err != nil {
		t.Fatalf("virtual authenticator: %v", err)
	}
	return res.AuthenticatorID
}

// signInActions sign the site's user in with the password on /login.
func (s *site) signInActions() []chromedp.Action[chromedp.Void] {
	return []chromedp.Action[chromedp.Void]{
		chromedp.Navigate(s.origin + "/login"),
		chromedp.SendKeys(`input[name="email"]`, s.email),
		chromedp.SendKeys(`input[name="password"]`, pw),
		chromedp.Click("#sign-in"),
		chromedp.WaitVisible("#create-key"),
	}
}

func TestSecurityKeyInTheBrowserSignsInAndAnswersTheReauthPrompt(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := browser.Chromium(t)
	base := s.origin // localhost: a secure context, and WebAuthn's relying party

	// Sign in with the password and add a security key on the security page.
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.SendKeys(`input[name="email"]`, s.email),
		chromedp.SendKeys(`input[name="password"]`, pw),
		chromedp.Click("#sign-in"),
		chromedp.WaitVisible("#create-key"),
		chromedp.Navigate(base+"/settings/security"),
		chromedp.WaitVisible("#add-key"),
	)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	authID := virtualKey(t, ctx)
	err = chromedp.Do(ctx,
		chromedp.SendKeys(`form[data-webauthn-register] input[name="name"]`, "laptop key"),
		chromedp.Click("#add-key"),
		chromedp.WaitVisible("#recovery"),
	)
	if err != nil {
		status, _ := chromedp.Run(ctx, chromedp.Text("#status"))
		t.Fatalf("adding the key: %v (page says %q)", err, status)
	}
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#recovery-codes li").length`))
	if err != nil || n != 10 {
		t.Fatalf("recovery codes shown: %d (%v)", n, err)
	}
	err = chromedp.Do(ctx, chromedp.Click("#recovery-done"), chromedp.WaitVisible("#add-key"))
	if err != nil {
		t.Fatal(err)
	}
	listed, err := chromedp.Run(ctx, chromedp.Text("#webauthn-keys"))
	if err != nil || !strings.Contains(listed, "laptop key") {
		t.Fatalf("the key is not listed: %q (%v)", listed, err)
	}

	// Sign out, then in again: the password, then the key.
	err = chromedp.Do(ctx,
		chromedp.Click(`header form button[type="submit"]`),
		chromedp.WaitVisible("#sign-in"),
		chromedp.SendKeys(`input[name="email"]`, s.email),
		chromedp.SendKeys(`input[name="password"]`, pw),
		chromedp.Click("#sign-in"),
		chromedp.WaitVisible("#use-key"),
		chromedp.Click("#use-key"),
		chromedp.WaitVisible("#create-key"),
	)
	if err != nil {
		status, _ := chromedp.Run(ctx, chromedp.Text("body"))
		t.Fatalf("signing in with the key: %v (page: %.300s)", err, status)
	}
	var aal int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT aal FROM sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1", s.c.UserID).Scan(&aal); err != nil || aal != 2 {
		t.Fatalf("the session's assurance level is %d (%v)", aal, err)
	}

	// Five minutes later, creating a key asks for the password and the key,
	// then replays the request by itself.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '10 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(`input[name="name"]`, "from-the-browser"),
		chromedp.Click("#create-key"),
		chromedp.WaitVisible("#reauth"),
		chromedp.SendKeys(`#reauth input[name="password"]`, pw),
		chromedp.Click(`#reauth button[type="submit"]`),
		chromedp.WaitVisible(`#reauth [data-use-key]`),
		chromedp.Click(`#reauth [data-use-key]`),
		chromedp.WaitVisible("#new-key"),
	)
	if err != nil {
		msg, _ := chromedp.Run(ctx, chromedp.Text("#reauth .error"))
		t.Fatalf("create key with the password and key prompt: %v (prompt says %q)", err, msg)
	}
	key, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("new-key").textContent`))
	if err != nil || !strings.HasPrefix(strings.TrimSpace(key), "gmk_acct_live_") {
		t.Fatalf("the new key: %q (%v)", key, err)
	}
	if st := s.call(t, "GET", "/api/v1/whoami", "", ""); st.Status != 401 {
		t.Fatalf("whoami without credentials: %d", st.Status)
	}
	req := s.Do(t, "GET", "/api/v1/whoami", "", map[string]string{"Authorization": "Bearer " + strings.TrimSpace(key)})
	if req.Status != 200 {
		t.Fatalf("the key shown does not work: %d", req.Status)
	}

	// The authenticator signed three times: registration, sign-in, re-auth.
	creds, err := chromedp.Call(ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: authID})
	if err != nil || len(creds.Credentials) != 1 || creds.Credentials[0].SignCount < 2 {
		t.Fatalf("virtual credentials: %+v (%v)", creds, err)
	}
	var stored int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT (credential->'authenticator'->>'signCount')::int FROM webauthn_credentials WHERE user_id = $1", s.c.UserID).Scan(&stored); err != nil || stored != int(creds.Credentials[0].SignCount) {
		t.Fatalf("stored signature counter %d, authenticator's %v (%v)", stored, creds.Credentials[0].SignCount, err)
	}
}

// Once the authenticator app is on, its key leaves the page: it was shown
// only for the setup, and must not stay on screen beside the recovery
// codes.
func TestAuthenticatorKeyLeavesThePageOnceTheAppIsOn(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := browser.Chromium(t)
	err := chromedp.Do(ctx, append(s.signInActions(),
		chromedp.Navigate(s.origin+"/settings/security"),
		chromedp.Click("#setup-totp"),
		chromedp.WaitVisible("#totp-setup"),
	)...)
	if err != nil {
		t.Fatalf("setting up the app: %v", err)
	}
	seed, err := chromedp.Run(ctx, chromedp.Text("#totp-secret"))
	if err != nil || seed == "" {
		t.Fatalf("the key shown for setup: %q (%v)", seed, err)
	}
	// Its QR image loads (the page asks for it with a cache-buster).
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`(() => { const i = document.getElementById("totp-qr"); return i.complete && i.naturalWidth > 0 })()`,
		chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("the QR image of the key never loaded: %v", err)
	}
	code, err := mfa.CodeAt(strings.TrimSpace(seed), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(`#totp-setup input[name="code"]`, code),
		chromedp.Click("#confirm-totp"),
		chromedp.WaitVisible("#recovery"),
	)
	if err != nil {
		status, _ := chromedp.Run(ctx, chromedp.Text("#status"))
		t.Fatalf("turning the app on: %v (page says %q)", err, status)
	}
	still, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("totp-secret").textContent !== "" || !document.getElementById("totp-setup").hidden || document.getElementById("totp-qr").hasAttribute("src")`))
	if err != nil || still {
		t.Fatalf("the app's key is still on the page after setup (%v)", err)
	}
	html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	if err != nil || strings.Contains(html, strings.TrimSpace(seed)) {
		t.Fatalf("the page's DOM still holds the key (%v)", err)
	}
}

// A re-auth asked for at the last step of adding a key (the five minutes
// ran out while the user found the key) makes a new session, which the
// ceremony begun by the old one does not belong to: the page starts the
// ceremony again after the prompt, and the key is added.
func TestAddingAKeyWhoseLastStepAsksForReauthStartsAgain(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := browser.Chromium(t)
	// Each navigator.credentials.create waits until the test lets it go.
	hold := `(() => { const c = navigator.credentials; const orig = c.create.bind(c);
  c.create = async (o) => { await new Promise((r) => { window.__go = r; }); window.__go = null; return orig(o); }; })();`
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: hold}); err != nil {
		t.Fatal(err)
	}
	err := chromedp.Do(ctx, append(s.signInActions(),
		chromedp.Navigate(s.origin+"/settings/security"),
		chromedp.WaitVisible("#add-key"),
	)...)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	virtualKey(t, ctx)
	release := func() {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`typeof window.__go === "function"`)); err != nil {
			t.Fatalf("the page never asked the key: %v", err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__go(), true`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.SendKeys(`form[data-webauthn-register] input[name="name"]`, "desk key"), chromedp.Click("#add-key")); err != nil {
		t.Fatal(err)
	}
	// The key is slow to be touched: the five minutes run out meanwhile.
	if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`typeof window.__go === "function"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '10 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	release()
	err = chromedp.Do(ctx,
		chromedp.WaitVisible("#reauth"),
		chromedp.SendKeys(`#reauth input[name="password"]`, pw),
		chromedp.Click(`#reauth button[type="submit"]`),
		chromedp.WaitNotVisible("#reauth"),
	)
	if err != nil {
		t.Fatalf("the re-auth prompt: %v", err)
	}
	release() // the ceremony again, under the new session
	if err := chromedp.Do(ctx, chromedp.WaitVisible("#recovery")); err != nil {
		status, _ := chromedp.Run(ctx, chromedp.Text("#status"))
		t.Fatalf("adding the key after the re-auth: %v (page says %q)", err, status)
	}
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM webauthn_credentials WHERE user_id = $1", s.c.UserID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("keys stored: %d (%v)", n, err)
	}
}
