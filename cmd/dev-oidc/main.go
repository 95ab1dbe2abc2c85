// Command dev-oidc is a local OpenID Connect provider for `make up`, in
// place of Google: discovery, JWKS, an authorization endpoint that approves
// at once as the demo user given by the flags, and a token endpoint. It
// accepts one client and one redirect URI, and requires a nonce and PKCE
// (S256). Never expose it: anyone who reaches it signs in as the demo user.
//
//	dev-oidc -addr 127.0.0.1:15556 -client-id guardian-dev -client-secret S \
//	    -redirect http://localhost:8080/auth/google/callback
//
// The issuer is http://ADDR/oidc unless -issuer says otherwise; point
// GUARDIAN_OIDC_ISSUER at it. The provider is functions/oidc/oidctest.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/glassmkr/guardian/functions/oidc/oidctest"
)

func main() {
	demo := oidctest.DemoUser()
	addr := flag.String("addr", "127.0.0.1:15556", "listen address")
	issuer := flag.String("issuer", "", "issuer URL, http://HOST:PORT/oidc (default: from -addr)")
	clientID := flag.String("client-id", "", "the client's id (required)")
	clientSecret := flag.String("client-secret", "", "the client's secret (required; GUARDIAN_OIDC_CLIENT_SECRET is read when unset)")
	redirect := flag.String("redirect", "", "the only redirect URI accepted (required)")
	email := flag.String("email", demo.Email, "the demo user's e-mail address")
	subject := flag.String("subject", demo.Subject, "the demo user's subject (stable id)")
	name := flag.String("name", demo.Name, "the demo user's name")
	unverified := flag.Bool("unverified", false, "say the e-mail address is not verified")
	flag.Parse()
	if *clientSecret == "" {
		*clientSecret = os.Getenv("GUARDIAN_OIDC_CLIENT_SECRET")
	}
	if *clientID == "" || *clientSecret == "" || *redirect == "" {
		fmt.Fprintln(os.Stderr, "dev-oidc: -client-id, -client-secret and -redirect are required")
		flag.Usage()
		os.Exit(2)
	}
	p, err := oidctest.Start(*addr, oidctest.Config{
		Issuer:       *issuer,
		ClientID:     *clientID,
		ClientSecret: *clientSecret,
		RedirectURI:  *redirect,
		User:         oidctest.User{Subject: *subject, Email: *email, EmailVerified: !*unverified, Name: *name},
	})
	if err != nil {
		log.Fatalf("dev-oidc: %v", err)
	}
	log.Printf("dev-oidc: issuer %s on %s, signing everyone in as %s", p.Issuer(), p.Addr(), *email)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	if err := p.Close(); err != nil {
		log.Fatalf("dev-oidc: %v", err)
	}
}
