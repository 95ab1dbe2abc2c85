package oidctest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

const redirect = "http://app.test/auth/google/callback"

func start(t *testing.T) (*Provider, *oauth2.Config, *oidc.IDTokenVerifier) {
	t.Helper()
	p, err := Start("127.0.0.1:0", Config{ClientID: "guardian", ClientSecret: "s3cret", RedirectURI: redirect})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	prov, err := oidc.NewProvider(context.Background(), p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	cfg := &oauth2.Config{ClientID: "guardian", ClientSecret: "s3cret", Endpoint: prov.Endpoint(), RedirectURL: redirect, Scopes: []string{"openid", "email", "profile"}}
	return p, cfg, prov.Verifier(&oidc.Config{ClientID: "guardian"})
}

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorize follows the authorization URL and returns the redirect's
// query, or the error document's "error".
func authorize(t *testing.T, u string) (url.Values, string) {
	t.Helper()
	resp, err := noRedirects.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		var doc map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		return nil, doc["error"]
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), redirect) {
		t.Fatalf("redirected to %q", resp.Header.Get("Location"))
	}
	return loc.Query(), ""
}

func TestAFullSignInVerifiesWithGoOIDC(t *testing.T) {
	p, cfg, verifier := start(t)
	ann := User{Subject: "s-1", Email: "Ann@Example.com", EmailVerified: true, Name: "Ann", HostedDomain: "example.com"}
	p.QueueUser(ann)
	v := oauth2.GenerateVerifier()
	q, e := authorize(t, cfg.AuthCodeURL("the-state", oidc.Nonce("the-nonce"), oauth2.S256ChallengeOption(v)))
	if e != "" || q.Get("state") != "the-state" || q.Get("code") == "" {
		t.Fatalf("authorize: %v %s", q, e)
	}
	if _, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v+"x")); err == nil {
		t.Fatal("a wrong PKCE verifier was accepted")
	}
	// mockoidc spends a code on any grant attempt: start again.
	p.QueueUser(ann)
	q, _ = authorize(t, cfg.AuthCodeURL("the-state", oidc.Nonce("the-nonce"), oauth2.S256ChallengeOption(v)))
	tok, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatal(err)
	}
	idt, err := verifier.Verify(context.Background(), tok.Extra("id_token").(string))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Email    string `json:"email"`
		Verified bool   `json:"email_verified"`
		Name     string `json:"name"`
		HD       string `json:"hd"`
	}
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if idt.Subject != "s-1" || idt.Nonce != "the-nonce" || c.Email != "Ann@Example.com" || !c.Verified || c.Name != "Ann" || c.HD != "example.com" {
		t.Fatalf("claims: %s %s %+v", idt.Subject, idt.Nonce, c)
	}
	if _, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v)); err == nil {
		t.Fatal("a code was exchanged twice")
	}
	// Without a queued user, the configured one signs in.
	q, _ = authorize(t, cfg.AuthCodeURL("s", oidc.Nonce("n"), oauth2.S256ChallengeOption(v)))
	tok, err = cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatal(err)
	}
	if idt, err := verifier.Verify(context.Background(), tok.Extra("id_token").(string)); err != nil || idt.Subject != DemoUser().Subject {
		t.Fatalf("default user: %v %v", idt, err)
	}
}

func TestTheProviderRefusesWhatGuardianMustNotSend(t *testing.T) {
	_, cfg, _ := start(t)
	v := oauth2.GenerateVerifier()
	other := *cfg
	other.RedirectURL = "http://evil.test/cb"
	for _, tc := range []struct{ name, url string }{
		{"an unregistered redirect URI", other.AuthCodeURL("s", oidc.Nonce("n"), oauth2.S256ChallengeOption(v))},
		{"no nonce", cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(v))},
		{"no PKCE", cfg.AuthCodeURL("s", oidc.Nonce("n"))},
		{"plain PKCE", cfg.AuthCodeURL("s", oidc.Nonce("n"), oauth2.SetAuthURLParam("code_challenge", v), oauth2.SetAuthURLParam("code_challenge_method", "plain"))},
		{"another client", strings.Replace(cfg.AuthCodeURL("s", oidc.Nonce("n"), oauth2.S256ChallengeOption(v)), "client_id=guardian", "client_id=other", 1)},
	} {
		if q, e := authorize(t, tc.url); e == "" {
			t.Errorf("%s: accepted, %v", tc.name, q)
		}
	}
}

func TestTokensCanBeMadeWrong(t *testing.T) {
	p, cfg, verifier := start(t)
	v := oauth2.GenerateVerifier()
	signIn := func() (string, error) {
		q, _ := authorize(t, cfg.AuthCodeURL("s", oidc.Nonce("n"), oauth2.S256ChallengeOption(v)))
		tok, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
		if err != nil {
			t.Fatal(err)
		}
		idt, err := verifier.Verify(context.Background(), tok.Extra("id_token").(string))
		if err != nil {
			return "", err
		}
		return idt.Nonce, nil
	}
	other := "other-nonce"
	p.QueueUser(User{Subject: "x", Email: "x@example.com", EmailVerified: true, Nonce: &other})
	if n, err := signIn(); err != nil || n != other {
		t.Fatalf("nonce: %q %v", n, err)
	}
	p.QueueUser(User{Subject: "x", Email: "x@example.com", EmailVerified: true, Audience: []string{"someone-else"}})
	if _, err := signIn(); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("audience: %v", err)
	}
	p.ForgeNextSignature()
	if _, err := signIn(); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("forged signature: %v", err)
	}
	if _, err := signIn(); err != nil {
		t.Fatalf("after a forged one: %v", err)
	}
}

func TestTheIssuerCanBeNamed(t *testing.T) {
	p, err := Start("127.0.0.1:0", Config{ClientID: "c", ClientSecret: "s", Issuer: "http://localhost:1/oidc"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Issuer() != "http://localhost:1/oidc" {
		t.Fatalf("issuer %s", p.Issuer())
	}
	resp, err := http.Get("http://" + p.Addr() + "/oidc/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&doc)
	if doc["issuer"] != "http://localhost:1/oidc" || doc["authorization_endpoint"] != "http://localhost:1/oidc/authorize" {
		t.Fatalf("discovery: %v", doc)
	}
	if _, err := Start("127.0.0.1:0", Config{ClientID: "c", ClientSecret: "s", Issuer: "http://localhost:1/elsewhere"}); err == nil {
		t.Fatal("an issuer mockoidc cannot serve was accepted")
	}
}
