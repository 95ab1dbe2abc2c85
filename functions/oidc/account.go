package main

import (
	"context"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/glassmkr/guardian/shared/pgtext"
)

// googleUser is who the verified ID token says signed in.
type googleUser struct {
	Subject      string
	Email        string // lower-case, verified by the provider
	Name         string
	HostedDomain string
}

// account is the Guardian user a Google sign-in resolves to.
type account struct {
	UserID, CustomerID string
	HasPassword        bool
	SignedUp           bool // the customer was created by this sign-in
	Linked             bool // an existing user got this Google subject now
}

// Refusals of resolve.
var (
	errSignupClosed   = errors.New("signup_closed")
	errAccountClosing = errors.New("account_closing")
	errEmailTaken     = errors.New("email_linked_elsewhere")
	errLinkNeedsLogin = errors.New("link_needs_password")
	// errReauthOtherAccount: a confirmation (reauth) answered by another
	// Google account than the signed-in user's.
	errReauthOtherAccount = errors.New("reauth_other_account")
	// errReauthSignedOut: a confirmation started without a signed-in
	// session.
	errReauthSignedOut = errors.New("reauth_signed_out")
)

const (
	userBySubject = `SELECT u.id, u.customer_id, u.password_hash IS NOT NULL, c.deletion_requested_at IS NOT NULL
FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.google_subject = $1`
	userByEmail = `SELECT u.id, u.customer_id, u.password_hash IS NOT NULL, c.deletion_requested_at IS NOT NULL, coalesce(u.google_subject, '')
FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.email = $1 FOR UPDATE OF u`
	linkSubject    = `UPDATE users SET google_subject = $2, updated_at = now() WHERE id = $1`
	createCustomer = `INSERT INTO customers (name, plan) VALUES ($1, 'free') RETURNING id`
	createUser     = `INSERT INTO users (customer_id, email, google_subject, role) VALUES ($1, $2, $3, 'admin') RETURNING id`
)

// resolve finds the user of g, in this order:
//
//  1. the user whose google_subject is g's subject (the usual sign-in);
//  2. the user with g's e-mail address and no Google subject yet: it is
//     linked to g. Every Google sign-in requires email_verified, so the
//     provider vouches that g controls the address the account was made
//     with. A user with a password is linked only from a session of that
//     user (signedIn), that is once its password was given in this
//     browser (errLinkNeedsLogin otherwise): Google's word on an address
//     is not proof enough to take over an account whose credential is a
//     password (an address mistyped by an operator, a provider that
//     recycles addresses). A user with that address already linked to
//     another subject is refused (errEmailTaken);
//  3. nobody: a new customer (plan free) with g as its admin, unless
//     sign-up is closed (errSignupClosed).
//
// The stored e-mail address is not changed when the provider's changes.
func resolve(ctx context.Context, tx pgx.Tx, g googleUser, signupOpen bool, signedIn string) (account, error) {
	var a account
	var closing bool
	err := tx.QueryRow(ctx, userBySubject, g.Subject).Scan(&a.UserID, &a.CustomerID, &a.HasPassword, &closing)
	if err == nil {
		if closing {
			return a, errAccountClosing
		}
		return a, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return a, err
	}
	var subject string
	err = tx.QueryRow(ctx, userByEmail, g.Email).Scan(&a.UserID, &a.CustomerID, &a.HasPassword, &closing, &subject)
	if err == nil {
		switch {
		case subject != "":
			return a, errEmailTaken
		case closing:
			return a, errAccountClosing
		case a.HasPassword && signedIn != a.UserID:
			return a, errLinkNeedsLogin
		}
		if _, err := tx.Exec(ctx, linkSubject, a.UserID, g.Subject); err != nil {
			return a, err
		}
		a.Linked = true
		return a, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return a, err
	}
	if !signupOpen {
		return account{}, errSignupClosed
	}
	if err := tx.QueryRow(ctx, createCustomer, customerName(g)).Scan(&a.CustomerID); err != nil {
		return a, err
	}
	if err := tx.QueryRow(ctx, createUser, a.CustomerID, g.Email, g.Subject).Scan(&a.UserID); err != nil {
		return a, err
	}
	a.SignedUp = true
	return a, nil
}

// customerName names a new customer: the Workspace domain when the
// provider gives one (an organisation signing up), else the person's
// name, else the e-mail address's domain.
func customerName(g googleUser) string {
	name := strings.TrimSpace(g.HostedDomain)
	if name == "" {
		name = strings.TrimSpace(g.Name)
	}
	if name == "" {
		if _, domain, ok := strings.Cut(g.Email, "@"); ok {
			name = domain
		}
	}
	if name == "" {
		name = g.Email
	}
	return truncate(pgtext.Clean(name, 800), 200)
}

// truncate cuts s to at most n characters, on a character boundary.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n])
}

// isUniqueViolation reports a unique-constraint conflict: two first
// sign-ins of one person racing each other.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}
